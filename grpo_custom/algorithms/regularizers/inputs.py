"""What a regularizer reads (:class:`RegularizerInputs`), what it returns (``RegularizerOutput``),
and the masked mean the built-ins use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# (term, metrics): metric values are floats or 0-d tensors (tensors keep the term traceable by torch.compile;
# RegularizerSpec.compute turns them into floats).
RegularizerOutput = tuple[torch.Tensor, dict[str, "float | torch.Tensor"]]

_PER_TOKEN_FIELDS = ("logps", "old_logps", "ref_logps", "entropies")  # checked against the mask's [B, T]


@dataclass(kw_only=True)
class RegularizerInputs:
    """The per-token tensors a regularizer may read; ``mask`` is present except for parameter-space terms.

    Args:
        mask: [B, T] float, 1 for completion tokens, 0 for padding (None only for parameter-space terms).
        logps: [B, T] log-probs of the sampled tokens under the current policy (with grad).
        old_logps: [B, T] log-probs under the policy that generated the batch, or None.
        ref_logps: [B, T] log-probs under the reference policy, or None.
        advantages: [B] or [B, T] advantages, or None.
        entropies: [B, T] entropy of the policy's next-token distribution at each position, or
            None (with grad when computed in the loss).
        model: the policy ``nn.Module`` for parameter-space terms, or None.
        completion_lengths: [B] number of completion tokens per sequence, or None.
        importance_ratio: [B, T] (token level) or [B, 1] (sequence level) π/π_old of the sampled
            tokens, with grad, when the trainer applies TRL's ``use_bias_correction_kl`` to KL terms
            (TRL's ``coef_1``); None for no correction. Read by ``kl`` at loss placement.
    """

    mask: torch.Tensor | None
    logps: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    entropies: torch.Tensor | None = None
    model: nn.Module | None = None
    completion_lengths: torch.Tensor | None = None
    importance_ratio: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mask is None:
            present = [name for name in (*_PER_TOKEN_FIELDS, "importance_ratio") if getattr(self, name) is not None]
            if present:
                raise ValueError(f"RegularizerInputs without a mask cannot hold per-token tensors {present}.")
            return
        if not isinstance(self.mask, torch.Tensor) or self.mask.dim() != 2:
            shape = tuple(self.mask.shape) if isinstance(self.mask, torch.Tensor) else type(self.mask).__name__
            raise ValueError(f"RegularizerInputs.mask must be a [B, T] tensor, got {shape}.")
        ratio = self.importance_ratio
        rows, columns = self.mask.shape
        if ratio is not None and tuple(ratio.shape) not in ((rows, columns), (rows, 1)):
            raise ValueError(
                f"RegularizerInputs.importance_ratio must have shape {(rows, columns)} (token level) or {(rows, 1)} "
                f"(sequence level), got {tuple(ratio.shape)}."
            )

    def require(self, field_name: str, regularizer: str) -> Any:
        """Return the field ``field_name``; raise ValueError naming ``regularizer`` when it is None."""
        value = getattr(self, field_name)
        if value is None:
            raise ValueError(f"Regularizer {regularizer!r} needs inputs.{field_name}, which is None.")
        if isinstance(value, torch.Tensor) and field_name in _PER_TOKEN_FIELDS and value.shape != self.mask.shape:
            raise ValueError(
                f"Regularizer {regularizer!r}: inputs.{field_name} has shape {tuple(value.shape)}, "
                f"expected the mask's shape {tuple(self.mask.shape)}."
            )
        return value


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·mask / max(Σ mask, 1), over all elements or along ``dim``.

    An all-padding mask gives 0 (the denominator is clamped at 1, as TRL does), not NaN.

    Args:
        x: [B, T] values.
        mask: [B, T] weights (1 keep, 0 drop), bool or float.
        dim: reduce along this dimension only; None reduces everything to a scalar.
    """
    weights = mask.to(x.dtype)
    if dim is None:
        return (x * weights).sum() / weights.sum().clamp(min=1)
    return (x * weights).sum(dim) / weights.sum(dim).clamp(min=1)
