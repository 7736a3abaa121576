"""Loss hooks: per-token regularizer terms where TRL adds its KL term, and parameter-space terms."""
from __future__ import annotations

import torch

from grpo_custom.algorithms.loss_aggregation import aggregate_like_loss_type
from grpo_custom.algorithms.regularizers import RegularizerInputs
from grpo_custom.fork.hooks.lengths import lengths_from_padded
from grpo_custom.fork.hooks.metrics import _log_regularizer, _mode


def _accumulation_steps(trainer) -> int:
    return trainer.current_gradient_accumulation_steps if trainer.model.training else 1


def _kl_importance_ratio(trainer, per_token_logps, old_per_token_logps, mask) -> torch.Tensor | None:
    """π/π_old as TRL's ``coef_1`` when ``use_bias_correction_kl`` is on (TRL's default), else None.

    TRL multiplies its beta KL term by this ratio; the ``kl`` regularizer does the same with it.
    Returns [B, T] for ``importance_sampling_level="token"``, [B, 1] (masked mean log-ratio) for
    ``"sequence"``.
    """
    if not getattr(trainer.args, "use_bias_correction_kl", False) or old_per_token_logps is None:
        return None
    log_ratio = per_token_logps - old_per_token_logps  # [B, T]
    if trainer.importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [B, 1]
    return torch.exp(log_ratio)


def add_loss_regularizers(
    trainer,
    per_token_loss: torch.Tensor,
    *,
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor | None,
    inputs: dict,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    entropies: torch.Tensor | None,
) -> torch.Tensor:
    """``per_token_loss + Σ coef · term`` [B, T] over the loss-placed regularizers.

    Added where TRL adds ``beta · per_token_kl``, so the loss type then masks and normalizes each
    term like the policy loss. The coefficient is the one at ``trainer.state.global_step`` (the
    number of optimizer updates done: the log entry of this update has ``step`` = global_step + 1)
    and enters as a tensor multiplying the term; a zero coefficient adds nothing (exactly the loss
    without the regularizer). KL terms get TRL's ``use_bias_correction_kl`` ratio. Logs
    ``regularizers/<name>/{value,coef,loss}``, ``loss`` being the term's share of the logged loss.
    """
    specs = trainer.grpo_custom.placed("loss")
    if not specs:
        return per_token_loss
    mode = _mode(trainer)
    step = int(trainer.state.global_step)
    accumulation = _accumulation_steps(trainer)
    ratio = None
    if any(spec.needs_reference for spec in specs):
        ratio = _kl_importance_ratio(trainer, per_token_logps, old_per_token_logps, mask)
    reg_inputs = RegularizerInputs(
        logps=per_token_logps, old_logps=old_per_token_logps, ref_logps=inputs.get("ref_per_token_logps"),
        mask=mask.float(), advantages=advantages, entropies=entropies, model=None,
        completion_lengths=_loss_lengths(trainer, inputs, mask), importance_ratio=ratio,
    )
    for spec in specs:
        coef = spec.coef_at(step)
        term, metrics = spec.compute(reg_inputs)  # [B, T]
        weighted = torch.as_tensor(coef, dtype=term.dtype, device=term.device) * term  # [B, T]
        if coef != 0.0:
            per_token_loss = per_token_loss + weighted
        contribution = aggregate_like_loss_type(
            weighted.detach(), mask, loss_type=trainer.loss_type,
            max_completion_length=trainer.max_completion_length,
            num_items_in_batch=inputs.get("num_items_in_batch"),
            num_processes=trainer.accelerator.num_processes,
            accumulation_steps=accumulation,
            steps_per_generation=trainer.args.steps_per_generation if trainer.model.training else 1,
        )
        _log_regularizer(trainer, mode, spec, coef, {**metrics, "loss": contribution.item() * accumulation})
    return per_token_loss


def _loss_lengths(trainer, inputs: dict, mask: torch.Tensor) -> torch.Tensor:
    """Tokens generated per row of a loss micro-batch ([B]; :func:`lengths_from_padded`), not the loss mask."""
    completion_ids, completion_mask = inputs.get("completion_ids"), inputs.get("completion_mask")
    pad_id = getattr(getattr(trainer, "_tokenizer", None), "pad_token_id", None)
    if completion_ids is None or completion_mask is None or pad_id is None:
        return mask.sum(dim=1)
    return lengths_from_padded(completion_ids, completion_mask, pad_id)


def parameter_regularizer_loss(trainer, model) -> torch.Tensor | float:
    """Σ coef · term over parameter-space regularizers, scaled for gradient accumulation (0.0 if none).

    Coefficients at ``trainer.state.global_step``, as in :func:`add_loss_regularizers`; a zero
    coefficient adds nothing. Logs ``regularizers/<name>/{value,coef,loss}`` (``loss`` = coef · term).
    """
    specs = trainer.grpo_custom.placed("parameters")
    if not specs:
        return 0.0
    mode = _mode(trainer)
    step = int(trainer.state.global_step)
    reg_inputs = RegularizerInputs(
        logps=None, old_logps=None, ref_logps=None, mask=None, advantages=None, entropies=None,
        model=trainer.accelerator.unwrap_model(model), completion_lengths=None,
    )
    total = 0.0
    for spec in specs:
        coef = spec.coef_at(step)
        term, metrics = spec.compute(reg_inputs)  # scalar
        if coef != 0.0:
            total = total + torch.as_tensor(coef, dtype=term.dtype, device=term.device) * term / _accumulation_steps(
                trainer
            )
        _log_regularizer(trainer, mode, spec, coef, {**metrics, "loss": coef * float(term.detach())})
    return total
