"""The clipped value (critic) loss and the explained variance of a value function.

PPO's value loss (Schulman et al. 2017, arXiv 1707.06347, as in verl ``compute_value_loss``, OpenRLHF
``ValueLoss`` and TRL's former ``PPOTrainer``): the value prediction may move at most ``c`` from the
value the batch was scored with, and the larger of the clipped and unclipped squared errors counts:

    V_clip = V_old + clamp(V − V_old, −c, c),     ℓ_t = ½·max((V_t − R_t)², (V_clip,t − R_t)²),

aggregated over the scored tokens like the policy loss (``loss_type``,
:func:`grpo_custom.algorithms.loss_aggregation.aggregate_like_loss_type`).
"""
from __future__ import annotations

import numbers

import torch

from grpo_custom.algorithms.loss_aggregation import aggregate_like_loss_type

__all__ = ["explained_variance", "value_loss"]


def _check(name: str, tensor, shape=None) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
        got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"value_loss: {name} must be a [B, T] tensor, got {got}.")
    if shape is not None and tensor.shape != shape:
        raise ValueError(f"value_loss: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} (that of vpreds).")
    return tensor


def value_loss(
    vpreds: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange_value: float | None,
    loss_type: str,
    max_completion_length: int | None = None,
    num_items_in_batch: torch.Tensor | float | None = None,
    num_processes: int = 1,
    accumulation_steps: int = 1,
    steps_per_generation: int = 1,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """½·max((V − R)², (V_old + clamp(V − V_old, ±c) − R)²) per token, aggregated like the policy loss.

    Args:
        vpreds: [B, T] value predictions V (with grad).
        returns: [B, T] targets R (e.g. GAE returns with the critic's λ); detached here.
        old_values: [B, T] V_old, the values the batch was scored with; detached here.
        mask: [B, T] 0/1 or bool, scored tokens.
        cliprange_value: c > 0, or None for the unclipped loss ½·(V − R)².
        loss_type: TRL's loss type (``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``, ``cispo``, ``vespo``,
            ``sapo``, ``luspo``), reduced as :func:`aggregate_like_loss_type` reduces it.
        max_completion_length: for ``dr_grpo``; default T.
        num_items_in_batch, num_processes, accumulation_steps, steps_per_generation: as
            :func:`aggregate_like_loss_type`.
        token_weights: [B, T] weights w replacing the aggregation: loss = Σ w·ℓ (e.g.
            ``token_weights_like_unsloth(mask, loss_kwargs)`` on Unsloth's path).

    Returns:
        (loss, metrics): the 0-d loss and detached 0-d float metrics over the scored tokens:
        ``clipfrac`` (share of tokens where the clipped error is strictly larger), ``vpred_mean``,
        ``returns_mean``, ``error_mean`` (mean (V − R)²) and ``loss_unclipped`` (the same aggregation of
        ½·(V − R)²).

    Raises:
        ValueError: shapes differ, c <= 0, or an unknown ``loss_type``.
    """
    _check("vpreds", vpreds)
    shape = vpreds.shape
    returns = _check("returns", returns, shape).detach().to(vpreds.dtype)
    old_values = _check("old_values", old_values, shape).detach().to(vpreds.dtype)
    weights = _check("mask", mask, shape).to(vpreds.dtype)
    if cliprange_value is not None and (isinstance(cliprange_value, bool)
                                        or not isinstance(cliprange_value, numbers.Real) or not cliprange_value > 0):
        raise ValueError(f"value_loss: cliprange_value must be a number > 0 or None, got {cliprange_value!r}.")
    unclipped = (vpreds - returns) ** 2  # [B, T]
    if cliprange_value is None:
        per_token = 0.5 * unclipped
        clipped_larger = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        clipped_values = old_values + (vpreds - old_values).clamp(-cliprange_value, cliprange_value)  # [B, T]
        clipped = (clipped_values - returns) ** 2  # [B, T]
        per_token = 0.5 * torch.maximum(unclipped, clipped)  # [B, T]
        clipped_larger = clipped > unclipped  # [B, T]

    def aggregate(values: torch.Tensor) -> torch.Tensor:
        if token_weights is not None:
            return (values * _check("token_weights", token_weights, shape).to(values.dtype)).sum()
        return aggregate_like_loss_type(
            values, weights, loss_type=loss_type, max_completion_length=max_completion_length or shape[1],
            num_items_in_batch=num_items_in_batch, num_processes=num_processes,
            accumulation_steps=accumulation_steps, steps_per_generation=steps_per_generation,
        )

    if token_weights is not None:  # the loss type is still checked
        aggregate_like_loss_type(per_token.detach(), weights, loss_type=loss_type, max_completion_length=shape[1])
    loss = aggregate(per_token)
    with torch.no_grad():
        count = weights.sum().clamp(min=1.0)

        def mean(values: torch.Tensor) -> torch.Tensor:
            return (values.to(weights.dtype) * weights).sum() / count

        metrics = {
            "clipfrac": mean(clipped_larger),
            "vpred_mean": mean(vpreds.detach()),
            "returns_mean": mean(returns),
            "error_mean": mean(unclipped.detach()),
            "loss_unclipped": aggregate(0.5 * unclipped.detach()),
        }
    return loss, metrics


CONSTANT_RETURNS_TOLERANCE = 1e-10  # Var(R) at or below this share of mean(R² + V²): R is constant up to round-off


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(R − V) / Var(R) over the scored tokens (population variances), NaN when R is constant there.

    1 is a perfect value function, 0 one no better than the mean return, negative one worse.
    Undefined when the returns are constant over the mask (e.g. every completion of the batch got
    the same reward, frequent early in training): then NaN, as stable-baselines3's
    ``explained_variance``; verl adds 1e-5 to Var(R) instead and logs −Var(V)/1e-5, a huge negative
    number that flattens every dashboard. "Constant" allows round-off: Var(R) ≤ 1e-10 · mean(R² + V²)
    over the scored tokens (R = A + V in float32 is not exactly constant when V is not), or Var(R) = 0.
    The trainer skips a NaN when it logs ``value/explained_variance`` (grpo_custom/value/rollout.py),
    so a logging step averages the defined batches and shows no point when none is.

    Args:
        values: [B, T] V.
        returns: [B, T] R.
        mask: [B, T] 0/1 or bool.

    Returns:
        0-d float32 tensor (detached); NaN when no token is scored or the returns are constant.
    """
    with torch.no_grad():
        weights = mask.to(torch.float64)
        count = weights.sum()
        if float(count) == 0:
            return torch.tensor(float("nan"))
        values = values.detach().to(torch.float64)
        returns = returns.detach().to(torch.float64)

        def variance(x: torch.Tensor) -> torch.Tensor:
            centered = x - (x * weights).sum() / count
            return (centered**2 * weights).sum() / count

        spread = variance(returns)
        scale = ((returns**2 + values**2) * weights).sum() / count
        if float(spread) == 0.0 or float(spread) <= CONSTANT_RETURNS_TOLERANCE * float(scale):
            return torch.tensor(float("nan"))
        return (1.0 - variance(returns - values) / spread).to(torch.float32)
