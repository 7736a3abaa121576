"""One configured regularizer (:class:`RegularizerSpec`: name, coefficient, checked options) and
parsing a config list into specs with unique metric labels."""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from grpo_custom.algorithms.regularizers.inputs import RegularizerInputs, RegularizerOutput
from grpo_custom.algorithms.regularizers.registry import get_regularizer
from grpo_custom.algorithms.sharding import full_parameters


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
        """Only the term (no checks, no float conversion): traceable inside Unsloth's compiled loss. For loss
        and reward placements only: a "parameters" term goes through :meth:`compute` (sharded parameters)."""
        return self.function(inputs, **self.options)[0]

    def _call(self, inputs: RegularizerInputs) -> RegularizerOutput:
        """The function on ``inputs``; a "parameters" term runs inside :func:`full_parameters` (FSDP2 / ZeRO-3
        shards: it reads whole, differentiable parameters, so it has the one-process value on every rank)."""
        if self.placement != "parameters":
            return self.function(inputs, **self.options)
        with full_parameters(inputs.model):
            return self.function(inputs, **self.options)

    def compute(self, inputs: RegularizerInputs) -> RegularizerOutput:
        """Run the regularizer with this spec's options; check the term's shape for its placement.

        Returns:
            (term, metrics): term [B, T] for "loss", [B] for "reward", a scalar for "parameters";
            metrics with float values, including "value". The coefficient is not applied.
            A "parameters" term runs inside :func:`grpo_custom.algorithms.sharding.full_parameters`, so under
            FSDP2 or ZeRO-3 it reads whole parameters and has the one-process value on every rank.
        """
        term, metrics = self._call(inputs)
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

