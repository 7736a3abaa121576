"""The built-in regularizers: ``kl``, ``entropy``, ``length`` (linear or DAPO's soft overlong penalty)
and ``lora_l2``."""
from __future__ import annotations

import numbers
import re

import torch

from grpo_custom.algorithms.kl import KL_KINDS, kl_estimate, sequence_kl
from grpo_custom.algorithms.regularizers.inputs import RegularizerInputs, RegularizerOutput, masked_mean
from grpo_custom.algorithms.regularizers.registry import register_regularizer


def _check_kl_options(*, kind: str, grad_kind: str | None, placement: str) -> None:
    """Validate the ``kl`` options (ValueError naming the option)."""
    if kind not in KL_KINDS:
        raise ValueError(f"Regularizer 'kl': unknown kind={kind!r}. Valid kinds: {', '.join(KL_KINDS)}.")
    if grad_kind is not None and grad_kind not in KL_KINDS:
        raise ValueError(f"Regularizer 'kl': unknown grad_kind={grad_kind!r}. Valid kinds: {', '.join(KL_KINDS)}.")
    if placement not in ("loss", "reward"):
        raise ValueError(f"Regularizer 'kl': placement must be 'loss' or 'reward', got {placement!r}.")
    if placement == "reward" and grad_kind is not None:
        raise ValueError(
            "Regularizer 'kl': grad_kind has no effect with placement='reward' (a reward penalty carries no "
            "gradient); remove it."
        )


@register_regularizer("kl", placement=("loss", "reward"), needs_reference=True, check_options=_check_kl_options)
def kl_regularizer(
    inputs: RegularizerInputs,
    *,
    kind: str = "k3",
    grad_kind: str | None = None,
    placement: str = "loss",
) -> RegularizerOutput:
    """KL(π‖π_ref) penalty from :func:`grpo_custom.algorithms.kl.kl_estimate` (Schulman, http://joschu.net/blog/kl-approx.html).

    loss placement:   term[b, t] = kl_estimate(logps, ref_logps, kind, grad_kind)[b, t] · w[b, t]
    reward placement: term[b] = Σ_t mask[b, t] · kl_estimate(logps, ref_logps, kind)[b, t]

    w = ``inputs.importance_ratio`` (π/π_old, TRL's ``use_bias_correction_kl``: value 1 on-policy,
    but its gradient turns the k3 gradient into the unbiased reverse-KL one, DeepSeek-V3.2,
    arXiv 2512.02556), or 1 when None. ``kind="k3"`` at loss placement is exactly TRL's ``beta``
    term, (e^Δ − Δ − 1)·w with Δ = ref_logps − logps, unclamped; ``"low_var_kl"`` is Unsloth's
    clamped one.

    Args:
        inputs: needs ``logps`` [B, T], ``ref_logps`` [B, T] and ``mask`` [B, T]; reads
            ``importance_ratio`` [B, T] or [B, 1] at loss placement when it is set.
        kind: KL estimator for the value (one of :data:`grpo_custom.algorithms.kl.KL_KINDS`).
        grad_kind: straight-through gradient estimator (loss placement only).
        placement: "loss" (per-token term [B, T]) or "reward" (per-sequence penalty [B]).

    Returns:
        (term, {"value": mean KL per completion token, the term's masked mean}); at reward placement
        also "per_sequence": mean over the batch of the per-sequence KL.
    """
    _check_kl_options(kind=kind, grad_kind=grad_kind, placement=placement)
    logps = inputs.require("logps", "kl")
    ref_logps = inputs.require("ref_logps", "kl")
    if placement == "loss":
        per_token = kl_estimate(logps, ref_logps, kind, grad_kind=grad_kind)  # [B, T]
        if inputs.importance_ratio is not None:
            per_token = per_token * inputs.importance_ratio  # [B, T]
        return per_token, {"value": masked_mean(per_token.detach(), inputs.mask)}
    per_sequence = sequence_kl(logps, ref_logps, inputs.mask, kind)  # [B]
    tokens = inputs.mask.sum().clamp(min=1)
    metrics = {
        "value": per_sequence.detach().sum() / tokens,
        "per_sequence": per_sequence.detach().mean(),
    }
    return per_sequence, metrics


@register_regularizer("entropy", needs_entropy=True)
def entropy_bonus(inputs: RegularizerInputs) -> RegularizerOutput:
    """Entropy bonus as a penalty: term[b, t] = −H(π(·| context_{b,t})); adding coef·term raises entropy.

    Args:
        inputs: needs ``entropies`` [B, T] (per-token entropy of the policy) and ``mask`` [B, T].

    Returns:
        ([B, T] −entropies, {"value": mean entropy per completion token}).
    """
    entropies = inputs.require("entropies", "entropy")
    return -entropies, {"value": masked_mean(entropies.detach(), inputs.mask)}


LENGTH_MODES = ("linear", "soft")


def _overlong_window(target: int, max_length: int | None, buffer: int | None) -> int:
    """Width of the soft penalty ramp that starts at ``target``, from ``buffer`` and/or ``max_length``."""
    if buffer is None and max_length is None:
        raise ValueError("Regularizer 'length': mode='soft' needs buffer (the ramp width L_cache) or max_length.")
    if buffer is None:
        buffer = max_length - target
    if max_length is not None and max_length != target + buffer:
        raise ValueError(
            f"Regularizer 'length': max_length={max_length} must equal target + buffer = {target} + {buffer}."
        )
    if buffer < 1:
        raise ValueError(f"Regularizer 'length': the soft ramp width must be ≥ 1 token, got buffer={buffer}.")
    return buffer


def _check_length_options(*, target: int, mode: str, max_length: int | None, buffer: int | None) -> None:
    """Validate the ``length`` options (ValueError naming the option)."""
    for option, value in (("target", target), ("max_length", max_length), ("buffer", buffer)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ValueError(f"Regularizer 'length': {option} must be an int, got {value!r}.")
    if target < 1:
        raise ValueError(f"Regularizer 'length': target must be ≥ 1, got {target}.")
    if mode not in LENGTH_MODES:
        raise ValueError(f"Regularizer 'length': unknown mode={mode!r}; choose one of {', '.join(LENGTH_MODES)}.")
    if mode == "linear":
        for option, value in (("max_length", max_length), ("buffer", buffer)):
            if value is not None:
                raise ValueError(f"Regularizer 'length': {option} only applies to mode='soft'; remove it.")
    else:
        _overlong_window(target, max_length, buffer)


@register_regularizer("length", placement="reward", check_options=_check_length_options)
def length_penalty(
    inputs: RegularizerInputs,
    *,
    target: int,
    mode: str = "linear",
    max_length: int | None = None,
    buffer: int | None = None,
) -> RegularizerOutput:
    """Penalty ≥ 0 on completion length L (placement "reward": the reward becomes r − coef·penalty).

    linear: penalty = max(0, L − target) / target, the overshoot as a fraction of the target
            (0 up to ``target``, 1 at twice the target, growing without bound).
    soft:   DAPO's overlong reward shaping (arXiv 2503.14476, eq. 13) with L_max − L_cache = target,
            L_cache = buffer, L_max = max_length = target + buffer:
            penalty = 0 if L ≤ target; (L − target) / buffer if target < L ≤ max_length; 1 beyond.
            DAPO's reward term R_length equals −penalty (use coef 1 to match it).

    Args:
        inputs: ``completion_lengths`` [B] if set, else the lengths are ``mask.sum(-1)`` ([B, T] mask).
        target: length (tokens) where the penalty starts.
        mode: "linear" or "soft".
        max_length: soft mode only: L_max, where the penalty reaches 1 (give it or ``buffer``).
        buffer: soft mode only: L_cache, the width of the ramp.

    Returns:
        ([B] penalty, {"value": mean penalty, "frac_penalized": fraction of completions with penalty > 0}).
    """
    _check_length_options(target=target, mode=mode, max_length=max_length, buffer=buffer)
    dtype = inputs.mask.dtype if inputs.mask.is_floating_point() else torch.float32
    lengths = inputs.completion_lengths if inputs.completion_lengths is not None else inputs.mask.sum(-1)
    if lengths.shape != (inputs.mask.shape[0],):
        raise ValueError(
            f"Regularizer 'length': completion_lengths must have shape ({inputs.mask.shape[0]},), "
            f"got {tuple(lengths.shape)}."
        )
    lengths = lengths.to(dtype)  # [B]
    if mode == "linear":
        penalty = (lengths - target).clamp(min=0) / target  # [B]
    else:
        penalty = ((lengths - target) / _overlong_window(target, max_length, buffer)).clamp(min=0, max=1)  # [B]
    metrics = {"value": penalty.mean(), "frac_penalized": (penalty > 0).to(dtype).mean()}
    return penalty, metrics


_LORA_WEIGHT_NAME = re.compile(r"(^|\.)lora_(embedding_)?[AB](\.|$)")


@register_regularizer("lora_l2", placement="parameters")
def lora_l2(inputs: RegularizerInputs) -> RegularizerOutput:
    """L2 penalty on the LoRA adapter weights: term = Σ_{W ∈ trainable lora_A / lora_B} ‖W‖²_F.

    Pulls the adapter (and so the update B·A) towards zero, i.e. the policy towards the base model,
    in parameter space. Summed in float32. DoRA's ``lora_magnitude_vector`` is not included: it
    holds weight-column norms, and pulling it towards zero would shrink the base weights.

    Args:
        inputs: needs ``model``, a PEFT LoRA model with trainable adapter weights.

    Returns:
        (scalar term with grad, {"value": the same ‖W‖² sum as a float}).
    """
    model = inputs.require("model", "lora_l2")
    weights = [
        parameter
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and _LORA_WEIGHT_NAME.search(name)
    ]
    if not weights:
        raise ValueError(
            f"Regularizer 'lora_l2': the model ({type(model).__name__}) has no trainable LoRA weights "
            "(parameters named lora_A / lora_B); it applies to PEFT LoRA models only."
        )
    term = torch.stack([weight.float().square().sum() for weight in weights]).sum()  # scalar
    return term, {"value": term.detach()}
