"""Per-token estimators of KL(π‖π_ref) from sampled tokens' log-probabilities.

Reference: J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html.
Every estimator here is a function of one sampled token's log-ratio

    Δ = log π_ref(x) − log π(x) = ref_logp − logp,     r = e^Δ = π_ref(x) / π(x),     x ~ π.

Two different questions matter, and they have different answers:

* **Value**: is E_{x~π}[k(x)] equal to KL(π‖π_ref)? (what a logged "kl" metric or a reward penalty means)
* **Gradient as a loss**: when k(x) is added to the loss and differentiated through ``logp`` with
  the sample x held fixed, what does E_{x~π}[∇_θ k(x)] equal? Using ∇_θ Δ = −∇_θ log π(x) and
  E_{x~π}[∇_θ log π(x)] = 0 (see arXiv 2510.01555, "Rethinking KL Regularization in RLHF", and
  arXiv 2505.17508, "On the Design of KL-Regularized Policy Gradient Algorithms"):

====  ======================  =============================================  =========================================
kind  formula                 value as an estimate of KL(π‖π_ref)            expected gradient when used as a loss
====  ======================  =============================================  =========================================
k1    −Δ                      unbiased; high variance; negative on some      E[∇ log π] = 0: no regularization
                              samples                                        signal in expectation (only noise)
k2    ½Δ²                     biased (E[½Δ²] ≠ KL, close to it when π ≈      E[log(π/π_ref) ∇ log π] = ∇ KL(π‖π_ref):
                              π_ref); low variance; ≥ 0                      the reverse-KL gradient, on-policy
k3    e^Δ − Δ − 1             unbiased (E[r] = 1); low variance; ≥ 0         E[(1 − r) ∇ log π] = ∇ KL(π_ref‖π): the
                                                                             forward-KL gradient, a first-order
                                                                             approximation (1 − r ≈ −Δ) of the
                                                                             reverse-KL gradient, biased for it
====  ======================  =============================================  =========================================

* ``low_var_kl``: k3 with Δ clamped to [−20, 20] and the result clamped to [−10, 10] (verl's
  ``low_var_kl``; the clamped k3 of Unsloth's fused GRPO loss, written with ``expm1`` as there).
  Same value and gradient as k3 except where a clamp is active: there the value is biased low and
  the gradient is zero.
* ``abs``: |Δ|. Its expectation E|log r| ≥ |E log r| = KL(π‖π_ref): biased upwards, not a
  divergence estimator in Schulman's sense. As a loss its expected gradient is
  E[sign(log(π/π_ref)) ∇ log π], which is the gradient of no standard divergence.
* ``mse``: alias of k2 (verl's name for ½(logp − ref_logp)²).

The gradient statements hold on-policy (x drawn from the π being differentiated). Off-policy
samples need an importance weight π/π_old on the term (TRL's ``use_bias_correction_kl``).
"""
from __future__ import annotations

import torch

_LOG_RATIO_CLAMP = 20.0  # verl's low_var_kl bound on Δ
_KL_CLAMP = 10.0  # verl's low_var_kl bound on the estimate


def _k1(log_ratio: torch.Tensor) -> torch.Tensor:
    """k1 = −Δ."""
    return -log_ratio


def _k2(log_ratio: torch.Tensor) -> torch.Tensor:
    """k2 = ½Δ²."""
    return 0.5 * log_ratio.square()


def _k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """k3 = e^Δ − Δ − 1, written exactly as TRL's beta term so swapping one for the other is bit-identical."""
    return torch.exp(log_ratio) - log_ratio - 1


def _low_var_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """clamp(expm1(Δc) − Δc, ±10) with Δc = clamp(Δ, ±20), as in Unsloth's fused GRPO loss."""
    clamped = torch.clamp(log_ratio, min=-_LOG_RATIO_CLAMP, max=_LOG_RATIO_CLAMP)
    return torch.clamp(torch.expm1(clamped) - clamped, min=-_KL_CLAMP, max=_KL_CLAMP)


def _abs(log_ratio: torch.Tensor) -> torch.Tensor:
    """abs = |Δ|."""
    return log_ratio.abs()


_ESTIMATORS = {"k1": _k1, "k2": _k2, "k3": _k3, "low_var_kl": _low_var_kl, "abs": _abs, "mse": _k2}
KL_KINDS = tuple(_ESTIMATORS)


def _check_kind(kind: object, argument: str) -> None:
    """Raise ValueError naming ``argument`` when ``kind`` is not one of :data:`KL_KINDS`."""
    if kind not in _ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {argument}={kind!r}. Valid kinds: {', '.join(KL_KINDS)}.")


def kl_estimate(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    kind: str = "k3",
    *,
    grad_kind: str | None = None,
) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref); formulas with Δ = ref_logp − logp (see the module docstring).

    k1 = −Δ;  k2 = mse = ½Δ²;  k3 = e^Δ − Δ − 1;  low_var_kl = clamp(k3(clamp(Δ, ±20)), ±10);
    abs = |Δ|. Schulman, http://joschu.net/blog/kl-approx.html.

    With ``grad_kind`` set to another kind, the result is straight-through: its value is that of
    ``kind`` and its gradient that of ``grad_kind`` (``v.detach() + g − g.detach()``), e.g.
    ``kind="k3", grad_kind="k2"`` logs an unbiased KL value while following the reverse-KL gradient.

    Args:
        logp: [B, T] log π of the sampled tokens under the current policy (carries the gradient).
        ref_logp: [B, T] log π_ref of the same tokens; same shape as ``logp``.
        kind: estimator for the value, one of :data:`KL_KINDS`.
        grad_kind: estimator whose gradient is used; ``None`` or ``kind`` means ``kind``'s own.

    Returns:
        [B, T] (the shape of the inputs) per-token estimate; padding positions are not masked.
    """
    _check_kind(kind, "kind")
    if grad_kind is not None:
        _check_kind(grad_kind, "grad_kind")
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"kl_estimate: logp and ref_logp must have the same shape, got {tuple(logp.shape)} "
            f"and {tuple(ref_logp.shape)}."
        )
    log_ratio = ref_logp - logp  # [B, T] Δ
    value = _ESTIMATORS[kind](log_ratio)  # [B, T]
    if grad_kind is None or grad_kind == kind:
        return value
    gradient_carrier = _ESTIMATORS[grad_kind](log_ratio)  # [B, T]
    return value.detach() + gradient_carrier - gradient_carrier.detach()


def sequence_kl(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "k3",
    *,
    grad_kind: str | None = None,
) -> torch.Tensor:
    """Per-sequence KL estimate: KL_b = Σ_t mask[b, t] · kl_estimate(logp, ref_logp, kind)[b, t].

    The summed per-token estimate is the estimate of the sequence-level KL(π‖π_ref) (the chain
    rule of KL), the quantity subtracted from the reward when the KL is placed in the reward.

    Args:
        logp: [B, T] log π of the sampled tokens.
        ref_logp: [B, T] log π_ref of the same tokens.
        mask: [B, T] 1 for completion tokens, 0 for padding (bool or float).
        kind: estimator, one of :data:`KL_KINDS`.
        grad_kind: straight-through gradient estimator, as in :func:`kl_estimate`.

    Returns:
        [B] summed estimate per sequence.
    """
    if mask.shape != logp.shape:
        raise ValueError(
            f"sequence_kl: mask must have the shape of logp {tuple(logp.shape)}, got {tuple(mask.shape)}."
        )
    per_token = kl_estimate(logp, ref_logp, kind, grad_kind=grad_kind)  # [B, T]
    return (per_token * mask.to(per_token.dtype)).sum(dim=-1)
