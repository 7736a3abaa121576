""":func:`blend`: one TRL reward function mixing two by a scalar schedule (a pure function of the step)."""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from grpo_custom.rewards.guard import classify_reward_value, describe_reward_value, reward_values
from grpo_custom.rewards.scalar_schedule import _finite_number, _interpolate

def blend(
    reward_a: Callable[..., list[float | None]],
    reward_b: Callable[..., list[float | None]],
    schedule: Callable[[int], float],
    name: str | None = None,
) -> Callable[..., list[float | None]]:
    """One TRL reward function ``r = (1 − m)·a + m·b`` with ``m = clamp(schedule(step), 0, 1)``.

    The step is the ``step`` keyword argument (passed by grpo-custom), else
    ``trainer_state.global_step``. Both inner rewards get the same arguments (all keyword arguments
    included). When ``m == 0`` only ``reward_a`` is called and when ``m == 1`` only ``reward_b``
    (saving its cost). A ``None`` (cannot score) from an inner reward with non-zero weight makes that
    sample ``None``. The returned function records the last mix in ``last_mix`` (NaN before the
    first call) for logging.

    Args:
        reward_a: reward function weighted ``1 − m`` (TRL signature, one value per completion).
        reward_b: reward function weighted ``m``.
        schedule: ``step -> float`` (e.g. a :class:`Schedule`), the mix ``m`` before clamping.
        name: ``__name__`` of the result; defaults to ``f"blend_{a}_{b}"`` from the inner names.
    """
    for argument, function in (("reward_a", reward_a), ("reward_b", reward_b), ("schedule", schedule)):
        if not callable(function):
            raise TypeError(f"blend {argument} must be callable, got {function!r}.")
        if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(getattr(function, "__call__", None)):
            raise TypeError(f"blend {argument} must be synchronous, got the async {function!r}.")
    if name is None:
        name = f"blend_{_function_name(reward_a, 'reward_a')}_{_function_name(reward_b, 'reward_b')}"
    elif not isinstance(name, str) or not name:
        raise ValueError(f"blend name must be a non-empty string, got {name!r}.")
    return _BlendedReward(reward_a, reward_b, schedule, name)


def _function_name(function: Callable, argument: str) -> str:
    """``function.__name__``, or a TypeError asking for ``name=`` when it has none (e.g. a partial)."""
    function_name = getattr(function, "__name__", None)
    if not isinstance(function_name, str):
        raise TypeError(f"blend {argument} {function!r} has no __name__; pass name=... to blend.")
    return function_name


class _BlendedReward:
    """The picklable reward function built by :func:`blend`."""

    def __init__(self, reward_a: Callable, reward_b: Callable, schedule: Callable[[int], float], name: str):
        self.reward_a = reward_a
        self.reward_b = reward_b
        self.schedule = schedule
        self.__name__ = name
        self.last_mix = math.nan

    def __call__(
        self, prompts: list, completions: list, completion_ids: list | None = None, **kwargs
    ) -> list[float | None]:
        mix = min(max(self._scheduled_mix(kwargs), 0.0), 1.0)
        self.last_mix = mix
        arguments = dict(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        if mix == 0.0:
            return self._scores(self.reward_a, arguments)
        if mix == 1.0:
            return self._scores(self.reward_b, arguments)
        scores_a = self._scores(self.reward_a, arguments)
        scores_b = self._scores(self.reward_b, arguments)
        return [None if a is None or b is None else _interpolate(a, b, mix) for a, b in zip(scores_a, scores_b)]

    def _scheduled_mix(self, kwargs: dict) -> float:
        """``schedule(step)`` with the step from ``step=`` or ``trainer_state.global_step``."""
        if "step" in kwargs:
            step = kwargs["step"]
        elif getattr(kwargs.get("trainer_state"), "global_step", None) is not None:
            step = kwargs["trainer_state"].global_step
        else:
            raise ValueError(
                f"Blended reward {self.__name__!r} needs the training step: pass step=... or a trainer_state "
                "with global_step."
            )
        return _finite_number(self.schedule(step), f"Blended reward {self.__name__!r}: schedule({step!r})")

    def _scores(self, reward: Callable, arguments: dict) -> list[float | None]:
        """Call ``reward`` and read its values through the guard's classification (``rewards/guard.py``).

        The output must be a sequence with one value per completion (:func:`~grpo_custom.rewards.guard.reward_values`:
        a list, tuple, 1-D array or tensor), else TypeError/ValueError naming the inner reward. Each value is
        :func:`~grpo_custom.rewards.guard.classify_reward_value`'d: a number becomes a float, ``None`` stays
        ``None``, a non-number raises TypeError naming the inner reward and the sample index, and a non-finite
        value (NaN, ±inf, or an int beyond float range such as ``10**400``) becomes NaN at its index only, which
        the trainer's guard then counts as ``non_finite`` for that one sample.
        """
        reward_name = getattr(reward, "__name__", repr(reward))
        scores = reward(**arguments)
        expected = len(arguments["completions"])
        values = reward_values(scores)
        if values is None:
            raise TypeError(
                f"Blended reward {self.__name__!r}: inner reward {reward_name!r} must return a list of "
                f"{expected} values, got {type(scores).__name__}."
            )
        if len(values) != expected:
            raise ValueError(
                f"Blended reward {self.__name__!r}: inner reward {reward_name!r} returned {len(values)} values "
                f"for {expected} completions."
            )
        checked = []
        for index, score in enumerate(values):
            number, kind = classify_reward_value(score)
            if kind == "non_number":
                raise TypeError(
                    f"Blended reward {self.__name__!r}: inner reward {reward_name!r} returned "
                    f"{describe_reward_value(score, typed=False)} for sample {index}; expected a number or None."
                )
            checked.append(math.nan if kind == "non_finite" else number)
        return checked

    def __repr__(self) -> str:
        return f"blend({self.reward_a!r}, {self.reward_b!r}, {self.schedule!r}, name={self.__name__!r})"
