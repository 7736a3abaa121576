"""The value head and its optimizer: V(s_t) = μ_R + σ_R·(wᵀx_t/√D + b), x_t = [LN(h_t^(l₁)); …; LN(h_t^(lₖ)); t / T_max].

μ_R, σ_R are running (debiased exponential, β = 0.99) statistics of the returns the critic fits, so the head
learns in return-normalised units whatever the reward's scale ("value normalization", as MAPPO's ValueNorm,
Yu et al. 2022, arXiv 2103.01955), and the 1/√D readout keeps one AdamW step's change of V at about lr·σ_R
whatever the hidden size D (without it one step moves V by about lr·√D).

Each chosen hidden state is layer-normed without affine weights (intermediate residual streams grow in scale
from layer to layer), concatenated and mapped to a scalar by one linear layer (old TRL's and verl's critic head is
``Linear(H, 1)``; reading several layers follows the "Value functions for LLMs" report, GUIDE §11). With
``time_feature`` the completion position over ``max_completion_length`` is one more input: a completion is an
episode with a time limit, whose value depends on the time left (Pardo et al. 2018, "Time Limits in Reinforcement
Learning", arXiv 1712.00378). Its weights start at zero (V ≡ 0: GAE then starts from Monte-Carlo advantages) and
are kept in float32.
"""
from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    """``len(layers)`` hidden states of width ``hidden_size`` → one value per position.

    Forward: a list of [..., H] tensors (any dtype) and, with ``time_feature``, the time [...] (t / T_max)
    → [...] float32 values.
    """

    def __init__(self, hidden_size: int, num_inputs: int, time_feature: bool = False):
        super().__init__()
        self.hidden_size, self.num_inputs, self.time_feature = int(hidden_size), int(num_inputs), bool(time_feature)
        self.linear = nn.Linear(self.hidden_size * self.num_inputs + int(self.time_feature), 1, dtype=torch.float32)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        # debiased EMA of the returns: [Σ β^k·mean, Σ β^k·mean of squares, Σ β^k (the debiasing weight)]
        self.register_buffer("return_moments", torch.zeros(3, dtype=torch.float32))

    RETURN_BETA = 0.99

    def return_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ_R, σ_R): 0 and 1 before any returns were seen; σ_R at least 1e-4."""
        first, second, weight = self.return_moments
        if float(weight) == 0.0:
            return self.return_moments.new_zeros(()), self.return_moments.new_ones(())
        mean = first / weight
        return mean, (second / weight - mean**2).clamp(min=1e-8).sqrt().clamp(min=1e-4)

    @torch.no_grad()
    def update_return_stats(self, returns: torch.Tensor, mask: torch.Tensor) -> None:
        """Fold one batch's returns (the scored tokens of ``mask``) into μ_R, σ_R."""
        weights = mask.to(torch.float32)
        count = weights.sum().clamp(min=1.0)
        batch = torch.stack([(returns.float() * weights).sum() / count,
                             (returns.float() ** 2 * weights).sum() / count, torch.ones(())]).to(self.return_moments)
        self.return_moments.mul_(self.RETURN_BETA).add_(batch * (1.0 - self.RETURN_BETA))

    def forward(self, hidden_states: list[torch.Tensor], time: torch.Tensor | None = None) -> torch.Tensor:
        if len(hidden_states) != self.num_inputs:
            raise ValueError(f"ValueHead expects {self.num_inputs} hidden states, got {len(hidden_states)}.")
        if (time is None) == self.time_feature:
            raise ValueError(f"ValueHead(time_feature={self.time_feature}) got time={'None' if time is None else 'a tensor'}.")
        normed = [nn.functional.layer_norm(h.float(), (self.hidden_size,)) for h in hidden_states]
        if time is not None:
            normed.append(time.to(torch.float32).unsqueeze(-1).expand(*normed[0].shape[:-1], 1))
        features = torch.cat(normed, dim=-1)
        mean, std = self.return_stats()
        return mean + std * self.linear(features / features.shape[-1] ** 0.5).squeeze(-1)


class HeadOptimizer:
    """The head's own AdamW (no weight decay) with optional gradient clipping, averaged over processes.

    :meth:`step` all-reduces (mean) the head's gradients when ``torch.distributed`` runs with more than one
    process, so every rank applies the same update to the same weights; then clips, steps and zeroes them.
    """

    def __init__(self, head: nn.Module, lr: float, max_grad_norm: float | None):
        self.head, self.max_grad_norm = head, max_grad_norm
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
        self.updates = 0

    def step(self) -> float:
        """Apply the accumulated gradient; returns the gradient norm before clipping (0.0 when there was none)."""
        params = [p for p in self.head.parameters() if p.grad is not None]
        if not params:
            return 0.0
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            torch.distributed.all_reduce(flat)
            flat /= torch.distributed.get_world_size()
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset: offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        return float(norm)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
