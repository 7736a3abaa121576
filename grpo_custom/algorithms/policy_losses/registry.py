"""The policy-loss contract, its registry, option checks and per-step option values (schedules).

A policy loss maps per-token log-probs to a per-token loss that the trainer's ``loss_type`` aggregates.
"""
from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

import torch

from grpo_custom.algorithms.registry import Registry

POLICY_LOSSES = Registry("policy-loss function")

# The data every policy loss receives positionally, in this order; no option may use these names.
DATA_INPUTS = ("log_probs", "old_log_probs", "advantages", "mask")
# Options the trainer fills from its config (epsilon, epsilon_high, delta) when the loss accepts them.
TRUST_REGION_OPTIONS = ("epsilon_low", "epsilon_high", "delta")


def _at_least(bound: float, strict: bool) -> Callable[[float], bool]:
    return (lambda value: value > bound) if strict else (lambda value: value >= bound)


# Value rules of the options named in the contract, checked at config time for constants and at each
# step for scheduled values: (test, description).
OPTION_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "epsilon_low": (_at_least(0.0, False), "≥ 0"),
    "epsilon_high": (_at_least(0.0, False), "≥ 0"),
    "delta": (_at_least(1.0, True), "> 1"),
    "clip_ratio_c": (_at_least(1.0, True), "> 1"),
    "tau_pos": (_at_least(0.0, True), "> 0"),
    "tau_neg": (_at_least(0.0, True), "> 0"),
    "clip_cov_ratio": (lambda value: 0.0 < value <= 1.0, "in (0, 1]"),
    "clip_cov_lb": (lambda value: True, "finite"),
    "clip_cov_ub": (lambda value: True, "finite"),
    "kl_cov_ratio": (lambda value: 0.0 < value <= 1.0, "in (0, 1]"),
    "ppo_kl_coef": (_at_least(0.0, False), "≥ 0"),
}


def register_policy_loss(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering a policy loss under ``name`` (duplicates are rejected).

    The function follows the contract ``fn(log_probs, old_log_probs, advantages, mask, *, <options>)
    -> (per_token_loss, metrics)``: every tensor ``[B, T]`` float, ``mask`` 1 on completion tokens,
    ``per_token_loss`` ``[B, T]`` (aggregated afterwards by the configured ``loss_type``) and ``metrics`` a
    dict of scalar tensors (logged as ``policy_loss/<key>``). Options are keyword-only parameters.
    """
    return POLICY_LOSSES.register(name)


def get_policy_loss(name: str) -> Callable:
    """The policy loss registered as ``name``; an unknown name's error lists the valid ones."""
    return POLICY_LOSSES.get(name)


def list_policy_losses() -> list[str]:
    """Names of all registered policy losses, in registration order."""
    return POLICY_LOSSES.names()


def _label(policy_loss: str | Callable, function: Callable) -> str:
    return policy_loss if isinstance(policy_loss, str) else getattr(function, "__qualname__", repr(function))


def accepted_options(function: Callable) -> tuple[list[str], bool]:
    """``(keyword option names, takes **kwargs)`` of a policy loss, from its signature."""
    parameters = inspect.signature(function).parameters
    keyword_kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [name for name, p in parameters.items() if p.kind in keyword_kinds and name not in DATA_INPUTS]
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def check_option_value(label: str, option: str, value: object, where: str = "") -> float | torch.Generator | None:
    """``value`` checked against the option's rule (:data:`OPTION_RULES`); a ValueError names the option.

    ``generator`` must be a ``torch.Generator`` (or None); other contract options finite numbers (``delta``
    may be None); options outside the contract are passed through unchecked.
    """
    if option == "generator":
        if value is not None and not isinstance(value, torch.Generator):
            raise TypeError(f"Policy loss {label!r}: option 'generator' must be a torch.Generator, got {value!r}.")
        return value
    if option not in OPTION_RULES:
        return value
    if option == "delta" and value is None:
        return None
    rule, description = OPTION_RULES[option]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not rule(value):
        raise ValueError(f"Policy loss {label!r}: option {option!r}{where} must be a finite number {description}, "
                         f"got {value!r}.")
    return float(value)


def validate_policy_loss_options(policy_loss: str | Callable, options: dict) -> None:
    """Check at config time that ``policy_loss`` takes the data inputs and every option in ``options``
    (plus the trust-region options it names, which the trainer supplies).

    Constant option values are checked against :data:`OPTION_RULES`; a callable value (a schedule
    ``step -> float``) is checked at each step instead. The function is never called here.

    Raises:
        UnknownNameError: an unregistered name.
        TypeError: options not a dict with str keys, or a function that cannot take the data inputs.
        ValueError: an option the loss does not accept (the message lists those it accepts), an option named
            like a data input, or a constant outside its rule.
    """
    function = POLICY_LOSSES.resolve(policy_loss)
    label = _label(policy_loss, function)
    if not isinstance(options, dict) or not all(isinstance(key, str) for key in options):
        raise TypeError(f"Options of policy loss {label!r} must be a dict with str keys, got {options!r}.")
    shadowed = sorted(set(options) & set(DATA_INPUTS))
    if shadowed:
        raise ValueError(f"Option(s) {shadowed} of policy loss {label!r} are data the trainer supplies, not options.")
    try:
        names, takes_any = accepted_options(function)
        signature = inspect.signature(function)
    except (TypeError, ValueError) as error:
        raise TypeError(f"Cannot read the signature of policy loss {label!r}: {error}") from None
    for option, value in options.items():
        if not takes_any and option not in names:
            raise ValueError(f"Unknown option {option!r} for policy loss {label!r}. "
                             f"Accepted options: {', '.join(names) if names else '(none)'}.")
        if not (callable(value) and not isinstance(value, torch.Generator)):
            check_option_value(label, option, value)
    supplied = {name: None if name == "delta" else 0.2 for name in TRUST_REGION_OPTIONS if name in names}
    try:
        signature.bind(*(torch.zeros(1, 1) for _ in DATA_INPUTS), **{**supplied, **options})
    except TypeError as error:
        raise TypeError(f"Policy loss {label!r} does not follow the contract "
                        f"fn(log_probs, old_log_probs, advantages, mask, *, <options>): {error}") from None


def _is_schedule(value: object) -> bool:
    return callable(value) and not isinstance(value, (torch.Generator, torch.Tensor))


@dataclass(frozen=True)
class PolicyLossSpec:
    """A resolved policy loss: its function, label and options (constants or ``step -> float`` schedules).

    Args:
        label: the registered name, or the callable's name.
        function: the loss following the contract.
        options: keyword options; a callable value (not a generator) is a schedule evaluated per step.
        stock: True when the trainer may keep TRL's / Unsloth's own computation (ppo_clip, constant options
            equal to the config's): then no policy-loss code runs at all.
    """

    label: str
    function: Callable
    options: dict = field(default_factory=dict)
    stock: bool = False

    @property
    def scheduled(self) -> list[str]:
        """Names of the options given as schedules."""
        return [name for name, value in self.options.items() if _is_schedule(value)]

    def values_at(self, step: int) -> dict[str, float]:
        """The scheduled options' values at optimizer step ``step`` (checked against their rules)."""
        values = {}
        for name in self.scheduled:
            value = self.options[name](step)
            values[name] = check_option_value(self.label, name, value, f" (schedule at step {step})")
        return values

    def options_at(self, step: int, device: torch.device | str | None = None) -> dict:
        """Options at ``step``: constants as given, scheduled values as 0-dim float32 tensors.

        Tensors, so code compiled around the loss never specializes on (and recompiles for) a moving value.
        """
        resolved = {name: value for name, value in self.options.items() if not _is_schedule(value)}
        for name, value in self.values_at(step).items():
            resolved[name] = torch.tensor(value, dtype=torch.float32, device=device)
        return resolved

    def __call__(self, log_probs, old_log_probs, advantages, mask, *, step: int = 0):
        """Run the loss at ``step``; checks the result's shape and metrics.

        Returns:
            (per_token_loss [B, T], metrics {name: scalar tensor}).
        """
        result = self.function(log_probs, old_log_probs, advantages, mask,
                               **self.options_at(step, device=log_probs.device))
        if not isinstance(result, tuple) or len(result) != 2:
            raise TypeError(f"Policy loss {self.label!r} must return (per_token_loss, metrics), got {type(result)}.")
        per_token, metrics = result
        if not isinstance(per_token, torch.Tensor) or per_token.shape != log_probs.shape:
            got = tuple(per_token.shape) if isinstance(per_token, torch.Tensor) else type(per_token).__name__
            raise ValueError(f"Policy loss {self.label!r} must return a per-token loss of shape "
                             f"{tuple(log_probs.shape)}, got {got}.")
        if not isinstance(metrics, dict):
            raise TypeError(f"Policy loss {self.label!r} must return a dict of metrics, got {type(metrics).__name__}.")
        return per_token, metrics


def build_policy_loss_spec(policy_loss: str | Callable, options: dict | None, trust_region: dict) -> PolicyLossSpec:
    """The :class:`PolicyLossSpec` a trainer runs: ``trust_region`` (the config's epsilon_low / epsilon_high /
    delta, constants or schedules) fills the options the loss accepts, unless ``options`` sets them.

    The spec is ``stock`` (TRL's / Unsloth's own computation is kept) for ``"ppo_clip"`` when ``options`` is
    empty and no trust-region value is scheduled.
    """
    options = dict(options or {})
    validate_policy_loss_options(policy_loss, options)
    function = POLICY_LOSSES.resolve(policy_loss)
    names, _ = accepted_options(function)
    merged = {name: value for name, value in trust_region.items() if name in names}
    merged.update(options)
    stock = (policy_loss == "ppo_clip" and not options and not any(_is_schedule(v) for v in trust_region.values()))
    return PolicyLossSpec(label=_label(policy_loss, function), function=function, options=merged, stock=stock)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ values·mask / max(Σ mask, 1) over all elements: a scalar."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def clamp(values: torch.Tensor, low=None, high=None) -> torch.Tensor:
    """``torch.clamp`` whose bounds may be Python numbers or 0-dim tensors (scheduled options)."""
    if isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
        low, high = (None if bound is None else torch.as_tensor(bound, dtype=values.dtype, device=values.device)
                     for bound in (low, high))
    return torch.clamp(values, low, high)
