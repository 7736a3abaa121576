"""Aggregate a per-token term the way the trainer's ``loss_type`` aggregates the policy loss.

Used to report each regularizer's contribution to the loss (``regularizers/<name>/loss``) on the
same scale as the loss itself, for TRL 1.15's loss types.
"""
from __future__ import annotations

import torch


def aggregate_like_loss_type(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    max_completion_length: int,
    num_items_in_batch: torch.Tensor | float | None = None,
    num_processes: int = 1,
    accumulation_steps: int = 1,
    steps_per_generation: int = 1,
) -> torch.Tensor:
    """Reduce ``per_token`` [B, T] (masked by ``mask`` [B, T]) to a scalar like TRL 1.15's loss types.

    - grpo, sapo: mean over sequences of the per-sequence token mean, / accumulation_steps;
    - bnpo: token mean over the batch, / accumulation_steps;
    - dr_grpo: token sum / (B · max_completion_length), / accumulation_steps;
    - dapo, cispo, vespo: token sum / (num_items_in_batch / num_processes · accumulation / steps_per_generation);
    - luspo: mean over sequences of the per-sequence token sum, / accumulation_steps.
    """
    masked = per_token * mask  # [B, T]
    if loss_type in ("grpo", "sapo"):
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation_steps
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0) / accumulation_steps
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token.size(0) * max_completion_length) / accumulation_steps
    if loss_type in ("dapo", "cispo", "vespo"):
        items = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
        normalizer = items.clamp(min=1.0) / num_processes * accumulation_steps / steps_per_generation
        return masked.sum() / normalizer
    if loss_type == "luspo":
        return masked.sum(-1).mean() / accumulation_steps
    raise ValueError(f"Unknown loss_type {loss_type!r} for regularizer aggregation.")


def token_weights_like_unsloth(mask: torch.Tensor, loss_kwargs: dict) -> torch.Tensor:
    """Per-token weights w [B, T] with Σ w·x == Unsloth's aggregation of a per-token loss x.

    Unsloth's ``grpo_compute_loss`` (unsloth_zoo 2026.10.7) reduces its per-token loss linearly;
    the reduction depends on ``loss_type`` and the kwargs it receives: with ``sample_weight``, a
    weighted token sum / (1/processes · accumulation/steps_per_generation); grpo/sapo: per-sequence
    token mean, averaged, / accumulation; bnpo without ``num_items_in_batch``: global token mean /
    accumulation; dr_grpo: token sum / (B · max_completion_length) / accumulation;
    bnpo/cispo/dapo/vespo with ``num_items_in_batch``: token sum / (items / processes ·
    accumulation / steps_per_generation); luspo: per-sequence sum, averaged, / accumulation.
    A grpo-custom term weighted this way is aggregated exactly like Unsloth's own policy and KL terms.
    """
    mask = mask.to(torch.float32)
    loss_type = loss_kwargs.get("loss_type", "grpo")
    accumulation = loss_kwargs.get("current_gradient_accumulation_steps", 1)
    processes = loss_kwargs.get("num_processes", 1)
    steps_per_generation = loss_kwargs.get("steps_per_generation", None)
    items = loss_kwargs.get("num_items_in_batch", None)
    sample_weight = loss_kwargs.get("sample_weight", None)
    rows = mask.size(0)

    def window_scale(value):
        return value * accumulation / steps_per_generation if steps_per_generation else value

    if sample_weight is not None:
        divisor = window_scale(1.0 / processes)
        return mask * sample_weight.to(mask.dtype).unsqueeze(-1) / divisor
    if loss_type in ("grpo", "sapo"):
        return mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / rows / accumulation
    if loss_type == "bnpo" and items is None:
        return mask / mask.sum().clamp(min=1.0) / accumulation
    if loss_type == "dr_grpo":
        return mask / (rows * loss_kwargs.get("max_completion_length", 8192)) / accumulation
    if loss_type in ("bnpo", "cispo", "dapo", "vespo"):
        count = items.clamp(min=1.0) if torch.is_tensor(items) else torch.tensor(max(float(items), 1.0))
        return mask / window_scale(count.to(mask.device) / processes)
    if loss_type == "luspo":
        return mask / rows / accumulation
    raise ValueError(f"Unknown loss_type {loss_type!r} for regularizer aggregation.")
