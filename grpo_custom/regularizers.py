"""Regularizers: named penalty terms added to the GRPO objective, and their validated configs.

A regularizer is a pure function ``fn(inputs: RegularizerInputs, **options) -> (term, metrics)``
registered with :func:`register_regularizer`. The term is a **penalty**: the trainer adds
``coef * term`` to the loss, or subtracts ``coef * term`` from the reward. Where it goes is the
regularizer's placement:

* ``"loss"``: ``term`` is per token [B, T], added to the per-token policy loss before the loss
  type aggregates it (so it is masked and normalised like the policy loss);
* ``"reward"``: ``term`` is per sequence [B], subtracted from each completion's reward before the
  advantage estimator (computed at generation time, without gradient);
* ``"parameters"``: ``term`` is a scalar added to the aggregated loss.

Regularizers see per-token tensors only (never logits): Unsloth's fused loss computes log-probs
chunk by chunk and never holds a [B, T, V] tensor. ``metrics`` always holds ``"value"``, the
masked mean of the regularized quantity (mean KL per token, mean entropy, mean penalty, ‖W‖²).

A config entry such as ``{"name": "kl", "kind": "k1", "placement": "reward", "coef": 0.02}``
becomes a :class:`RegularizerSpec` (every key other than ``name`` and ``coef`` is an option),
validated against the function's keyword-only options when it is built.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from grpo_custom.kl import KL_KINDS, kl_estimate, sequence_kl
from grpo_custom.registry import Registry

PLACEMENTS = ("loss", "reward", "parameters")

REGULARIZERS = Registry("regularizer")

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


def register_regularizer(
    name: str,
    *,
    placement: str | tuple[str, ...] = "loss",
    needs_entropy: bool = False,
    needs_reference: bool = False,
    check_options: Callable[..., None] | None = None,
) -> Callable[[Callable[..., RegularizerOutput]], Callable[..., RegularizerOutput]]:
    """Decorator registering a regularizer under ``name`` in :data:`REGULARIZERS`.

    The function must take the inputs as its one positional parameter and every option as a
    keyword-only parameter (no ``**kwargs``), so a misspelled option in a config is an error.
    Attributes stored on it: ``placement`` (default placement), ``placements`` (allowed ones),
    ``needs_entropy``, ``needs_reference``, ``check_options``.

    Args:
        name: registry name, used in configs.
        placement: one of :data:`PLACEMENTS`, or a tuple of them when the placement is chosen per
            config through a keyword-only ``placement`` option (its default must be the first).
        needs_entropy: the term reads ``inputs.entropies`` (the trainer must compute them).
        needs_reference: the term reads ``inputs.ref_logps`` (the trainer needs a reference model).
        check_options: called with every option (defaults filled in) when a config is built;
            raises ValueError on a bad value, so a config fails before training starts.
    """
    placements = (placement,) if isinstance(placement, str) else tuple(placement)
    bad = [p for p in placements if p not in PLACEMENTS]
    if not placements or bad:
        raise ValueError(
            f"Regularizer {name!r}: placement must be one of {', '.join(PLACEMENTS)} (or a tuple of them), "
            f"got {placement!r}."
        )

    def decorator(function: Callable[..., RegularizerOutput]) -> Callable[..., RegularizerOutput]:
        _check_signature(name, function, placements)
        REGULARIZERS.register(name)(function)
        function.placement = placements[0]
        function.placements = placements
        function.needs_entropy = bool(needs_entropy)
        function.needs_reference = bool(needs_reference)
        function.check_options = check_options
        return function

    return decorator


def _check_signature(name: str, function: Callable, placements: tuple[str, ...]) -> None:
    """Enforce ``fn(inputs, *, option=default, ...)``; a multi-placement one needs a ``placement`` option."""
    parameters = list(inspect.signature(function).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not parameters or parameters[0].kind not in positional:
        raise TypeError(f"Regularizer {name!r} must take the RegularizerInputs as its first positional parameter.")
    for parameter in parameters[1:]:
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(
                f"Regularizer {name!r}: parameter {parameter.name!r} must be keyword-only (declare options after "
                "`*`; **kwargs is not allowed, so that misspelled options are caught)."
            )
    options = {parameter.name: parameter for parameter in parameters[1:]}
    if len(placements) > 1:
        if "placement" not in options or options["placement"].default != placements[0]:
            raise TypeError(
                f"Regularizer {name!r} is registered with placements {placements}: it must take a keyword-only "
                f"option `placement={placements[0]!r}` (the default is the first placement)."
            )
    elif "placement" in options:
        raise TypeError(
            f"Regularizer {name!r} has a 'placement' option but is registered with the single placement "
            f"{placements[0]!r}; register it with a tuple of placements."
        )


def get_regularizer(name: str) -> Callable[..., RegularizerOutput]:
    """The regularizer registered as ``name``; an unknown name raises an error listing the valid ones."""
    return REGULARIZERS.get(name)


def list_regularizers() -> list[str]:
    """Names of the registered regularizers, in registration order."""
    return REGULARIZERS.names()


@dataclass
class RegularizerSpec:
    """One configured regularizer: its name, coefficient and options, validated on construction.

    Args:
        name: a registered regularizer name.
        coef: a finite float ≥ 0, or a schedule ``step -> float`` (see :meth:`coef_at`).
        options: keyword options passed to the function (checked against its signature).
        label: unique name for metrics when a list holds the same regularizer twice; set by
            :func:`parse_regularizers`, defaults to ``name``.
    """

    name: str
    coef: float | Callable[[int], float] = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        function = get_regularizer(self.name)
        self.coef = _checked_coef(self.coef, self.name)
        if not isinstance(self.options, Mapping):
            raise TypeError(f"Regularizer {self.name!r}: options must be a dict, got {type(self.options).__name__}.")
        self.options = dict(self.options)
        resolved = self.resolved_options()
        placement = resolved.get("placement", function.placement)
        if placement not in function.placements:
            raise ValueError(
                f"Regularizer {self.name!r}: placement={placement!r} is not supported; "
                f"choose one of {', '.join(function.placements)}."
            )
        if function.check_options is not None:
            function.check_options(**resolved)
        if self.label is not None and (not isinstance(self.label, str) or not self.label):
            raise ValueError(f"Regularizer {self.name!r}: label must be a non-empty string, got {self.label!r}.")

    @classmethod
    def from_config(cls, item: Mapping[str, Any] | RegularizerSpec) -> RegularizerSpec:
        """Build a spec from ``{"name": ..., "coef": ..., **options}`` (or return a spec unchanged)."""
        if isinstance(item, RegularizerSpec):
            return item
        if not isinstance(item, Mapping):
            raise TypeError(
                "A regularizer config must be a dict like {'name': 'kl', 'coef': 0.02, ...} or a "
                f"RegularizerSpec, got {type(item).__name__}: {item!r}."
            )
        if "name" not in item:
            raise ValueError(f"A regularizer config needs a 'name' key; got keys {sorted(item)}.")
        options = {key: value for key, value in item.items() if key not in ("name", "coef")}
        return cls(name=item["name"], coef=item.get("coef", 1.0), options=options)

    def resolved_options(self) -> dict[str, Any]:
        """Every option of the function, the configured ones over the signature's defaults."""
        function = get_regularizer(self.name)
        accepted = {
            parameter.name: parameter.default
            for parameter in list(inspect.signature(function).parameters.values())[1:]
        }
        for key in self.options:
            if key not in accepted:
                close = difflib.get_close_matches(str(key), list(accepted), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"Unknown option {key!r} for regularizer {self.name!r}.{hint} "
                    f"Accepted options: {', '.join(accepted) or '(none)'}; plus 'coef'."
                )
        missing = [
            key for key, default in accepted.items() if default is inspect.Parameter.empty and key not in self.options
        ]
        if missing:
            raise ValueError(f"Regularizer {self.name!r} requires option(s) {', '.join(map(repr, missing))}.")
        return {**accepted, **self.options}

    @property
    def function(self) -> Callable[..., RegularizerOutput]:
        """The registered regularizer function."""
        return get_regularizer(self.name)

    @property
    def placement(self) -> str:
        """Where the term goes for this spec: the ``placement`` option if the function has one."""
        return self.resolved_options().get("placement", self.function.placement)

    @property
    def needs_entropy(self) -> bool:
        """Whether the trainer must compute per-token entropies for this regularizer."""
        return self.function.needs_entropy

    @property
    def needs_reference(self) -> bool:
        """Whether the trainer must compute reference log-probs for this regularizer."""
        return self.function.needs_reference

    @property
    def metric_prefix(self) -> str:
        """``regularizers/<label>``: where this regularizer's metrics are logged."""
        return f"regularizers/{self.label or self.name}"

    def coef_at(self, step: int) -> float:
        """The coefficient at optimizer step ``step``: the constant, or the schedule's value."""
        if not callable(self.coef):
            return self.coef
        value = self.coef(step)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"Regularizer {self.label or self.name!r}: coef schedule returned {value!r} at step {step}; "
                "it must return a finite number ≥ 0."
            )
        return float(value)

    def term(self, inputs: RegularizerInputs) -> torch.Tensor:
        """Only the term (no checks, no float conversion): traceable inside Unsloth's compiled loss."""
        return self.function(inputs, **self.options)[0]

    def compute(self, inputs: RegularizerInputs) -> RegularizerOutput:
        """Run the regularizer with this spec's options; check the term's shape for its placement.

        Returns:
            (term, metrics): term [B, T] for "loss", [B] for "reward", a scalar for "parameters";
            metrics with float values, including "value". The coefficient is not applied.
        """
        term, metrics = self.function(inputs, **self.options)
        placement = self.placement
        if placement == "parameters":
            expected = ()
        else:
            expected = tuple(inputs.mask.shape) if placement == "loss" else (inputs.mask.shape[0],)
        if not isinstance(term, torch.Tensor) or tuple(term.shape) != expected:
            got = tuple(term.shape) if isinstance(term, torch.Tensor) else type(term).__name__
            raise ValueError(
                f"Regularizer {self.name!r} with placement {placement!r} must return a term of shape "
                f"{expected}, got {got}."
            )
        if not isinstance(metrics, Mapping) or "value" not in metrics:
            raise ValueError(
                f"Regularizer {self.name!r} must return a metrics dict with a 'value' entry, got {metrics!r}."
            )
        return term, {key: float(value) for key, value in metrics.items()}


def _checked_coef(coef: object, name: str) -> float | Callable[[int], float]:
    """A finite float ≥ 0 (ints accepted) or a callable; anything else raises naming ``name``."""
    if callable(coef):
        return coef
    if isinstance(coef, bool) or not isinstance(coef, numbers.Real):
        raise TypeError(
            f"Regularizer {name!r}: coef must be a number or a callable step -> float, "
            f"got {type(coef).__name__} {coef!r}."
        )
    if not math.isfinite(coef) or coef < 0:
        raise ValueError(f"Regularizer {name!r}: coef must be finite and ≥ 0, got {coef!r}.")
    return float(coef)


def parse_regularizers(items: Sequence[Mapping[str, Any] | RegularizerSpec] | None) -> list[RegularizerSpec]:
    """Config list → specs, with unique metric labels (a repeated ``kl`` becomes ``kl``, ``kl_1``, ...).

    Args:
        items: a list of config dicts / specs; None or [] gives [].
    """
    if items is None:
        return []
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise TypeError(f"regularizers must be a list of configs, got {type(items).__name__}: {items!r}.")
    specs = [RegularizerSpec.from_config(item) for item in items]
    used: set[str] = set()
    labelled = []
    for spec in specs:
        label, suffix = spec.name, 0
        while label in used:
            suffix += 1
            label = f"{spec.name}_{suffix}"
        used.add(label)
        labelled.append(dataclasses.replace(spec, label=label))
    return labelled


# ----------------------------------------------------------------------------------------------
# Built-in regularizers
# ----------------------------------------------------------------------------------------------


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
    """KL(π‖π_ref) penalty from :func:`grpo_custom.kl.kl_estimate` (Schulman, http://joschu.net/blog/kl-approx.html).

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
        kind: KL estimator for the value (one of :data:`grpo_custom.kl.KL_KINDS`).
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
