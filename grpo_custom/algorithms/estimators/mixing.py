"""Composable advantages: a weighted sum of registered estimators, weights constant or scheduled per step.

A = Σ_k w_k(step)·A_k (TRL issue 7291: A = λ·A_GRPO + (1 − λ)·A_other).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .inputs import AdvantageInputs
from .registry import ADVANTAGE_ESTIMATORS, call_estimator, validate_estimator_options

@dataclass(frozen=True)
class EstimatorComponent:
    """One term of a :class:`MixedEstimator`: its label, estimator function, weight and options."""

    label: str
    function: Callable
    weight: float | Callable[[int], float]
    options: dict

    def weight_at(self, step: int) -> float:
        """The weight at optimizer step ``step`` (a schedule's value is checked: a finite number)."""
        value = self.weight(step) if callable(self.weight) else self.weight
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"Estimator mix: the weight of {self.label!r} at step {step} must be a finite number, "
                             f"got {value!r}.")
        return float(value)


class MixedEstimator:
    """A = Σ_k w_k(step)·A_k over registered (or callable) advantage estimators.

    Follows the estimator contract, plus ``step`` (the trainer passes the generation step, so scheduled
    weights move with training). Components returning [N] and [N, T] mix by broadcasting [N] over T.
    Build it with :func:`mix_estimators`.
    """

    uses_token_rewards = True  # each component is checked on its own by call_estimator

    def __init__(self, components: list[EstimatorComponent]):
        self.components = components
        self.__name__ = "mix(" + ", ".join(component.label for component in components) + ")"

    def __repr__(self) -> str:
        parts = ", ".join(f"{c.label!r}: {c.weight!r}" for c in self.components)
        return f"mix_estimators({{{parts}}})"

    def weights_at(self, step: int) -> dict[str, float]:
        """``{label: weight}`` at ``step``."""
        return {component.label: component.weight_at(step) for component in self.components}

    def components_at(self, rewards, num_generations=None, *, step: int = 0, epsilon=None,
                      **data) -> dict[str, torch.Tensor]:
        """Each component's advantages ([N] or [N, T]) for these rewards (weights not applied).

        ``rewards`` may be an :class:`~.inputs.AdvantageInputs` (then ``num_generations`` and ``data`` are
        not given); components of either contract are called through :func:`~.registry.call_estimator`.
        """
        inputs = rewards if isinstance(rewards, AdvantageInputs) else AdvantageInputs(
            rewards=rewards, num_generations=num_generations, **data)
        common = {} if epsilon is None else {"epsilon": epsilon}
        return {component.label: call_estimator(component.function, inputs, {**common, **component.options})
                for component in self.components}

    def combine(self, parts: Mapping[str, torch.Tensor], step: int) -> torch.Tensor:
        """Σ_k w_k(step)·A_k of :meth:`components_at`'s output."""
        token_level = any(part.dim() == 2 for part in parts.values())
        total = None
        for label, weight in self.weights_at(step).items():
            part = parts[label]
            if token_level and part.dim() == 1:
                part = part.unsqueeze(-1)  # [N, 1] broadcasts over T
            term = weight * part
            total = term if total is None else total + term
        return total

    def __call__(self, rewards, num_generations=None, *, completion_lengths=None, completion_mask=None,
                 rewards_per_func=None, reward_weights=None, epsilon=None, step: int = 0):
        """The mixed advantages [N] (or [N, T] if a component is token-level) at ``step``; ``epsilon``, when
        given, goes to every component that does not set its own. ``rewards`` may be an ``AdvantageInputs``."""
        if isinstance(rewards, AdvantageInputs):
            return self.combine(self.components_at(rewards, step=step, epsilon=epsilon), step)
        data = dict(completion_lengths=completion_lengths, completion_mask=completion_mask,
                    rewards_per_func=rewards_per_func, reward_weights=reward_weights)
        return self.combine(self.components_at(rewards, num_generations, step=step, epsilon=epsilon, **data), step)


def mix_estimators(weights: Mapping, options: Mapping | None = None, *,
                   defaults: Mapping | None = None) -> MixedEstimator:
    """A :class:`MixedEstimator` from ``{estimator: weight}``.

    Args:
        weights: ``{name or callable: weight}``; a weight is a finite number or a schedule ``step -> float``
            (e.g. ``Schedule.linear``). E.g. ``{"grpo": 0.5, "rloo": Schedule.linear(0.5, 1.0, 0, 100)}``.
        options: ``{name: {option: value}}`` per component (checked against each estimator's signature).
        defaults: options used for a component unless ``options`` sets them (the trainer passes
            ``{"grpo": {"scale_rewards": args.scale_rewards}}``, TRL's meaning of ``grpo``).

    Raises:
        UnknownNameError: an unregistered estimator name.
        ValueError / TypeError: an empty mix, a bad weight, options for a component not in the mix, or an
            option a component does not accept.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"An estimator mix needs a non-empty {{estimator: weight}} dict, got {weights!r}.")
    options = dict(options or {})
    labels = {}
    for key in weights:
        label = key if isinstance(key, str) else getattr(key, "__name__", repr(key))
        labels[label] = key
    unknown = sorted(set(options) - set(labels))
    if unknown:
        raise ValueError(f"Estimator mix: options given for {unknown}, which are not in the mix {sorted(labels)}.")
    components = []
    for label, key in labels.items():
        function = ADVANTAGE_ESTIMATORS.resolve(key)
        weight = weights[key]
        if not callable(weight):
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ValueError(f"Estimator mix: the weight of {label!r} must be a finite number or a schedule "
                                 f"step -> float, got {weight!r}.")
            weight = float(weight)
        component_options = {**dict((defaults or {}).get(label, {})), **dict(options.get(label) or {})}
        validate_estimator_options(key, component_options)
        components.append(EstimatorComponent(label, function, weight, component_options))
    return MixedEstimator(components)
