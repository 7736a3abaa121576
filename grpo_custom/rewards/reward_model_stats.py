"""Reward-model helpers: the model's position limit and gathering per-process scores in a distributed run."""
from __future__ import annotations

import torch
from torch import nn


def position_limit(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings cover (``max_position_embeddings``), if it says."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text_config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def rows_of_all_processes(row: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``row`` [K] of every process of a ``torch.distributed`` run stacked in rank order [P, K], and this rank.

    Outside a distributed run (or with one process): ``(row[None], 0)``. Every process must call this at the
    same point (the trainer calls reward functions on every process for each batch) with the same K.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return row.unsqueeze(0), 0
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, row.tolist())
    sizes = {len(part) for part in gathered}
    if len(sizes) != 1:
        raise ValueError(f"RewardModelReward: processes scored different numbers of completions ({sorted(sizes)}).")
    return torch.tensor(gathered, dtype=row.dtype), dist.get_rank()
