"""The critic's own optimizer: AdamW over the value head (and the critic adapter), averaged over processes."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class CriticOptimizer:
    """AdamW (betas (0.9, 0.999), no weight decay) over the head's parameters at ``lr`` and, for the ``adapter``
    kind, the critic adapter's at ``adapter_lr`` (None: ``lr``), with optional gradient clipping over both.

    :meth:`step` all-reduces (mean) the gradients when ``torch.distributed`` runs with more than one process, so
    every rank applies the same update to the same weights; then clips, steps and zeroes them.
    """

    def __init__(self, head: nn.Module, lr: float, max_grad_norm: float | None,
                 adapter_params: Iterable[nn.Parameter] = (), adapter_lr: float | None = None):
        adapter_params = list(adapter_params)
        self.max_grad_norm = max_grad_norm
        self.params = [*head.parameters(), *adapter_params]
        groups = [{"params": list(head.parameters()), "lr": lr}]
        if adapter_params:
            groups.append({"params": adapter_params, "lr": lr if adapter_lr is None else adapter_lr})
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
        self.updates = 0

    def step(self) -> float:
        """Apply the accumulated gradient; returns the gradient norm before clipping (0.0 when there was none)."""
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return 0.0
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            flat = torch.cat([p.grad.reshape(-1).float() for p in params])
            torch.distributed.all_reduce(flat)
            flat /= torch.distributed.get_world_size()
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset: offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        return float(norm)

    def state_dict(self) -> dict:
        """AdamW's state and the update count (for checkpoints)."""
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`: AdamW's moments and the update count. The learning rates stay this run's
        (a resume allowed to change ``lr`` / ``adapter_lr`` continues with the new ones)."""
        rates = [group["lr"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        self.updates = int(state["updates"])
