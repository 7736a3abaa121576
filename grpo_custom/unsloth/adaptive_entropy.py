"""TRL's adaptive entropy controller (``use_adaptive_entropy=True``) inside Unsloth's fast GRPO loss.

TRL 1.15 (after Skywork-OR1's adaptive entropy control, arXiv 2505.22312) adds ``-c_apply · H`` to the loss,
H the mean per-token entropy of the micro-batch over the tokens its policy term acts on, and gates and moves
the coefficient once per optimizer step:

    c_apply = c_t   if H_last <= entropy_target else 0          (H_last = +inf before the first update)
    H_t     = Σ_window Σ_tokens H·m / Σ_window Σ_tokens m       (all micro-batches of the accumulation window,
                                                                 summed over processes; m the effective mask)
    c_{t+1} = min(c_t + entropy_coef_delta, entropy_coef_max)   if H_t <= entropy_target
              max(c_t - entropy_coef_delta, entropy_coef_min)   otherwise;  H_last := H_t

Unsloth's loss drops the whole bonus when ``use_adaptive_entropy`` is set. Here, during each
``grpo_accumulated_loss`` call of a trainer that asks for it (see :mod:`grpo_custom.unsloth.loss_terms`):
:func:`begin_call` makes Unsloth compute its entropies and its bonus (the flag reads False and the coefficient
a non-zero placeholder for the call only); the bonus weights are taken at the unit coefficient, their support
is the effective mask (:func:`record_unit_weights`) and they are scaled by ``c_apply`` (:func:`bonus_coefficient`);
the entropies reaching ``UnslothGRPOEntropyBonus`` give the window sums (:func:`record_entropies`);
:func:`end_call` restores the trainer and :func:`update_controller` moves the coefficient at the optimizer step.
The controller's state lives in TRL's own trainer attributes (``entropy_coef``, ``_last_world_entropy``,
``_entropy_window_stats``), so TRL's checkpoint save and resume of ``entropy_ctrl_state.json`` keep working.
tests/unsloth/test_adaptive_entropy.py compares the coefficient trajectory and the metrics with TRL's own path.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

import torch

TRL_STATE_ATTRIBUTES = ("entropy_coef", "_last_world_entropy", "_entropy_window_stats")
_PLACEHOLDER_COEF = 1.0  # any non-zero value: Unsloth computes entropies and calls its bonus; the weights come from here


class AdaptiveEntropyError(RuntimeError):
    """The adaptive entropy controller cannot run on this trainer or this loss call (named in the message)."""


@dataclass
class AdaptiveCall:
    """One ``grpo_accumulated_loss`` call of an adaptive trainer.

    Attributes:
        apply_coef: ``c_apply`` of this call (the gated coefficient of the previous optimizer step).
        coef: the controller's coefficient when the call began (restored on the trainer afterwards).
        masks: effective masks recorded from the unit bonus weights (same shape as the entropies).
        stats: ``[Σ H·m, Σ m]`` of this call (float32, detached), or None when no entropies arrived.
    """

    apply_coef: float
    coef: float
    masks: list = field(default_factory=list)
    stats: torch.Tensor | None = None


_call: contextvars.ContextVar[AdaptiveCall | None] = contextvars.ContextVar("grpo_custom_adaptive_entropy",
                                                                            default=None)


def is_adaptive(trainer) -> bool:
    """Whether ``trainer``'s config asks for TRL's adaptive entropy controller."""
    return bool(getattr(getattr(trainer, "args", None), "use_adaptive_entropy", False))


def applied_coefficient(coef: float, last_entropy: float, target: float) -> float:
    """``c_apply``: ``coef`` when the last window's entropy is at or below ``target``, else 0."""
    return float(coef) if float(last_entropy) <= float(target) else 0.0


def next_coefficient(coef: float, window_entropy: float, target: float, delta: float, low: float, high: float) -> float:
    """``c_{t+1}``: ``coef + delta`` capped at ``high`` when ``window_entropy <= target``, else ``coef - delta``
    floored at ``low`` (units: the loss's, per nat of mean token entropy)."""
    if window_entropy <= target:
        return min(coef + delta, high)
    return max(coef - delta, low)


def begin_call(trainer) -> tuple[contextvars.Token, AdaptiveCall] | None:
    """Start an adaptive loss call (None when the trainer does not ask for one); pass the result to :func:`end_call`.

    Raises:
        AdaptiveEntropyError: the compiled trainer lacks TRL's controller state (a TRL whose ``__init__`` does not
            set ``_last_world_entropy`` / ``_entropy_window_stats``).
    """
    if not is_adaptive(trainer):
        return None
    missing = [name for name in TRL_STATE_ATTRIBUTES if not hasattr(trainer, name)]
    if missing:
        raise AdaptiveEntropyError(
            f"use_adaptive_entropy=True under patch_unsloth() keeps its state in TRL's trainer attributes {missing}, "
            f"which {type(trainer).__name__} lacks: the installed TRL's GRPOTrainer.__init__ does not set them.")
    coef = float(trainer.entropy_coef)
    call = AdaptiveCall(apply_coef=applied_coefficient(coef, trainer._last_world_entropy, trainer.args.entropy_target),
                        coef=coef)
    trainer.args.use_adaptive_entropy = False  # Unsloth's loss drops the bonus whole while this reads True
    trainer.entropy_coef = _PLACEHOLDER_COEF
    return _call.set(call), call


def end_call(trainer, started: tuple[contextvars.Token, AdaptiveCall] | None) -> None:
    """Undo :func:`begin_call` on ``trainer`` (its flag and the controller's coefficient)."""
    if started is None:
        return
    token, call = started
    _call.reset(token)
    trainer.args.use_adaptive_entropy = True
    trainer.entropy_coef = call.coef


def bonus_coefficient(requested: float) -> float:
    """The coefficient of TRL's entropy bonus in the current loss call: ``c_apply`` in an adaptive call, else
    ``requested`` (the static ``entropy_coef``)."""
    call = _call.get()
    return requested if call is None else call.apply_coef


def adaptive_call() -> AdaptiveCall | None:
    """The adaptive call in progress, or None."""
    return _call.get()


def record_unit_weights(unit_weights: torch.Tensor) -> None:
    """Unsloth's bonus weights at coefficient 1 ([B, T] or [1, n]); their support is TRL's effective mask
    (completion mask × ``top_entropy_quantile`` mask)."""
    call = _call.get()
    if call is not None:
        call.masks.append((unit_weights.detach() != 0).to(torch.float32))


def record_entropies(entropies: torch.Tensor) -> None:
    """The entropies Unsloth's bonus receives; adds ``[Σ H·m, Σ m]`` with the last recorded mask.

    Raises:
        AdaptiveEntropyError: no mask was recorded, or its shape differs from the entropies'.
    """
    call = _call.get()
    if call is None:
        return
    if not call.masks or call.masks[-1].shape != entropies.shape:
        shape = None if not call.masks else tuple(call.masks[-1].shape)
        raise AdaptiveEntropyError(f"adaptive entropy: Unsloth's entropy bonus got entropies of shape "
                                   f"{tuple(entropies.shape)} but its weights had shape {shape}.")
    mask = call.masks[-1].to(entropies.device)
    stats = torch.stack([(entropies.detach().float() * mask).sum(), mask.sum()])
    call.stats = stats if call.stats is None else call.stats + stats


def update_controller(trainer, call: AdaptiveCall) -> None:
    """After a training loss call: add its sums to the window; at an optimizer-step boundary reduce the window
    over processes, move ``trainer.entropy_coef`` by :func:`next_coefficient` and store ``_last_world_entropy``.
    Evaluation calls leave the controller alone (as in TRL).

    Raises:
        AdaptiveEntropyError: the call computed no entropies (Unsloth's non-chunked loss path has none).
    """
    if not trainer.model.training:
        return
    if call.stats is None:
        raise AdaptiveEntropyError(
            "use_adaptive_entropy=True: this loss call of Unsloth's computed no entropies (its non-chunked path, "
            "grpo_compute_loss_slow, has none), so the controller cannot measure the window's entropy.")
    window = trainer._entropy_window_stats
    trainer._entropy_window_stats = call.stats if window is None else window + call.stats
    if not trainer.accelerator.sync_gradients:
        return
    totals = trainer.accelerator.reduce(trainer._entropy_window_stats, reduction="sum")
    world_entropy = float(totals[0] / totals[1].clamp(min=1.0))
    args = trainer.args
    trainer.entropy_coef = next_coefficient(float(trainer.entropy_coef), world_entropy, args.entropy_target,
                                            args.entropy_coef_delta, args.entropy_coef_min, args.entropy_coef_max)
    trainer._last_world_entropy = world_entropy
    trainer._entropy_window_stats = None
