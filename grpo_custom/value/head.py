"""The value head: V(s_t) = μ_R + σ_R·(wᵀx_t/√D + w_τ·τ_t + b), x_t = [LN(h_t^(l₁)); …; LN(h_t^(lₖ))]
(width D), τ_t = 2·t/T_max − 1 (the time feature, optional).

μ_R, σ_R are running (debiased exponential, β = 0.99) statistics of the returns the critic fits, so the head
learns in return-normalised units whatever the reward's scale ("value normalization", as MAPPO's ValueNorm,
Yu et al. 2022, arXiv 2103.01955), and the 1/√D readout keeps one AdamW step's change of V at about lr·σ_R
whatever the hidden size D (without it one step moves V by about lr·√D). The time feature is a block of its own
at scale 1, so one step moves its part of V by about lr·σ_R too: read out at 1/√D with the hidden states (as
before), a step moved it by lr·σ_R/√D, and on the demo's length task with γ = 0.9, whose returns are mostly a
function of the time left, the head had not learned it after 40 steps at lr 0.03 (explained variance 0.05-0.06;
scale 1 and centred: 0.68-0.75, tests/value/test_value_learning.py). Centring it on [−1, 1] keeps it from
competing with the bias.

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
        hidden = torch.cat(normed, dim=-1)
        features = [hidden / hidden.shape[-1] ** 0.5]  # the hidden block, read out at 1/√D
        if time is not None:  # its own block at scale 1, centred: 2·t/T_max − 1 ∈ [−1, 1]
            features.append((2.0 * time.to(torch.float32) - 1.0).unsqueeze(-1).expand(*hidden.shape[:-1], 1))
        mean, std = self.return_stats()
        return mean + std * self.linear(torch.cat(features, dim=-1)).squeeze(-1)

