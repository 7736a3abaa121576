"""Scalar schedules ``step -> float`` (constant, linear, half-cosine, piecewise): pure functions of the step that pickle.

Blends between two values ``a`` (old) and ``b`` (new) at transition progress ``u ∈ [0, 1]`` use
the mix ``m`` and the value ``(1 − m)·a + m·b``, with ``m = u`` ("linear") or
``m = (1 − cos(π·u)) / 2`` ("cosine", i.e. the half-cosine ramp).
"""
from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, fields

BLENDS = ("step", "linear", "cosine")
INTERPOLATIONS = ("step", "linear")


def _mix(blend: str, progress: float) -> float:
    """Weight ``m`` of the new value at progress ``u`` ∈ [0, 1]: ``u`` (linear), ``(1 − cos(π·u))/2`` (cosine)."""
    if blend == "linear":
        return progress
    if blend == "cosine":
        return (1.0 - math.cos(math.pi * progress)) / 2.0
    raise ValueError(f"Unknown blend {blend!r}; expected one of {', '.join(BLENDS[1:])}.")


def _interpolate(old: float, new: float, mix: float) -> float:
    """``(1 − m)·old + m·new``; exact at ``m = 0`` and ``m = 1``."""
    return (1.0 - mix) * old + mix * new


def _finite_number(value: object, what: str) -> float:
    """``value`` as a float, or a ValueError naming ``what`` if it is not a finite real number (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a finite number, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}.")
    return float(value)


def _step_number(value: object, what: str) -> int:
    """``value`` as an int, or a ValueError naming ``what`` if it is not an integer ≥ 0 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an integer step >= 0, got {value!r} ({type(value).__name__}).")
    if value < 0:
        raise ValueError(f"{what} must be an integer step >= 0, got {value!r}.")
    return int(value)


class Schedule(ABC):
    """A scalar schedule: a picklable callable ``step -> float``.

    Build one with :meth:`constant`, :meth:`linear`, :meth:`cosine` or :meth:`piecewise`. Calling it
    with an integer step ``>= 0`` returns the value at that step; the repr is the factory call that
    rebuilds it.
    """

    factory: str  # name of the class method that builds this kind, used by repr

    def __call__(self, step: int) -> float:
        """Value of the schedule at ``step`` (an integer >= 0)."""
        return self._value(_step_number(step, f"{self.factory} schedule step"))

    @abstractmethod
    def _value(self, step: int) -> float:
        """Value at a validated step."""

    def __repr__(self) -> str:
        arguments = ", ".join(f"{field.name}={getattr(self, field.name)!r}" for field in fields(self))
        return f"Schedule.{self.factory}({arguments})"

    @classmethod
    def constant(cls, value: float) -> Schedule:
        """``v(step) = value`` for every step."""
        return _Constant(_finite_number(value, "Schedule.constant value"))

    @classmethod
    def linear(cls, start_value: float, end_value: float, start_step: int, end_step: int) -> Schedule:
        """Linear ramp ``v = start + (end − start)·u`` with ``u = clamp((step − s0)/(s1 − s0), 0, 1)``.

        ``s0 = start_step``, ``s1 = end_step``: constant ``start_value`` before ``start_step`` and
        ``end_value`` from ``end_step`` on.
        """
        return _Linear(*_ramp_arguments("linear", start_value, end_value, start_step, end_step))

    @classmethod
    def cosine(cls, start_value: float, end_value: float, start_step: int, end_step: int) -> Schedule:
        """Half-cosine ramp: ``v = end + (start − end)·(1 + cos(π·u))/2``, ``u`` as in :meth:`linear`.

        Constant outside ``[start_step, end_step]``; the midpoint value is the average of the two ends.
        """
        return _Cosine(*_ramp_arguments("cosine", start_value, end_value, start_step, end_step))

    @classmethod
    def piecewise(cls, points: Sequence[tuple[int, float]], interpolation: str = "step") -> Schedule:
        """Piecewise schedule through ``points = [(step, value), ...]`` (steps strictly increasing).

        ``interpolation="step"``: the value of the last point whose step has been reached;
        ``"linear"``: linear between consecutive points. Before the first point the first value
        holds, after the last point the last value holds.
        """
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Schedule.piecewise interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}."
            )
        if isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or len(points) == 0:
            raise ValueError(f"Schedule.piecewise needs a non-empty list of (step, value) pairs, got {points!r}.")
        checked: list[tuple[int, float]] = []
        for index, point in enumerate(points):
            if isinstance(point, (str, bytes)) or not isinstance(point, Sequence) or len(point) != 2:
                raise ValueError(f"Schedule.piecewise point {index} must be a (step, value) pair, got {point!r}.")
            step = _step_number(point[0], f"Schedule.piecewise point {index} step")
            value = _finite_number(point[1], f"Schedule.piecewise point {index} value")
            if checked and step <= checked[-1][0]:
                raise ValueError(
                    f"Schedule.piecewise steps must be strictly increasing (sorted, no duplicates): point {index} "
                    f"has step {step} after point {index - 1} with step {checked[-1][0]}."
                )
            checked.append((step, value))
        return _Piecewise(tuple(checked), interpolation)

    @classmethod
    def after_stage(cls, stage: str, schedule: Schedule, before: float | None = None) -> Schedule:
        """``schedule`` counted from the start ``t`` of reward stage ``stage``: ``v(step) = schedule(step − t)``
        once the stage has started (``step >= t``), ``before`` until then (default ``schedule(0)``).

        ``t`` is the stage's start in the trainer's ``reward_schedule``: a fixed start, or the step its gate
        opened (:class:`~grpo_custom.rewards.gates.Gate`). The trainer binds the schedule to its run when it is
        built (found in a regularizer ``coef`` — the tested use —, a scheduled ``epsilon``/``epsilon_high``/``delta``,
        ``policy_loss_kwargs``, estimator-mix weights or a :func:`blend` schedule); one schedule object follows
        one trainer at a time (the last one built with it). Unbound, only step 0 has a value (``before``). E.g. ``Schedule.after_stage("strict", Schedule.linear(0.0, 0.05, 0, 50))``
        warms a KL coefficient up over the 50 steps after the "strict" stage opens.

        Raises:
            ValueError: an empty stage name, a non-schedule ``schedule``, a non-finite ``before``; calling it
                before a trainer bound it (or with a stage its reward schedule lacks, at trainer construction).
        """
        if not isinstance(stage, str) or not stage:
            raise ValueError(f"Schedule.after_stage stage must be a stage name, got {stage!r}.")
        if not isinstance(schedule, Schedule) or isinstance(schedule, _AfterStage):
            raise ValueError(f"Schedule.after_stage needs a Schedule (constant/linear/cosine/piecewise), got {schedule!r}.")
        before = schedule(0) if before is None else _finite_number(before, "Schedule.after_stage before")
        return _AfterStage(stage, schedule, before)


def _ramp_arguments(
    kind: str, start_value: object, end_value: object, start_step: object, end_step: object
) -> tuple[float, float, int, int]:
    """Validated arguments of :meth:`Schedule.linear` / :meth:`Schedule.cosine`."""
    start_value = _finite_number(start_value, f"Schedule.{kind} start_value")
    end_value = _finite_number(end_value, f"Schedule.{kind} end_value")
    start_step = _step_number(start_step, f"Schedule.{kind} start_step")
    end_step = _step_number(end_step, f"Schedule.{kind} end_step")
    if end_step <= start_step:
        raise ValueError(
            f"Schedule.{kind} end_step must be greater than start_step, got start_step={start_step}, "
            f"end_step={end_step}."
        )
    return start_value, end_value, start_step, end_step


@dataclass(frozen=True, repr=False)
class _Constant(Schedule):
    """``v = value``."""

    value: float
    factory = "constant"

    def _value(self, step: int) -> float:
        return self.value


@dataclass(frozen=True, repr=False)
class _Ramp(Schedule):
    """A ramp between two steps, constant outside; ``factory`` ("linear" or "cosine") names its mix."""

    start_value: float
    end_value: float
    start_step: int
    end_step: int

    def _value(self, step: int) -> float:
        progress = min(max((step - self.start_step) / (self.end_step - self.start_step), 0.0), 1.0)
        return _interpolate(self.start_value, self.end_value, _mix(self.factory, progress))


class _Linear(_Ramp):
    """Linear ramp: mix ``m = u``."""

    factory = "linear"


class _Cosine(_Ramp):
    """Half-cosine ramp: mix ``m = (1 − cos(π·u))/2``."""

    factory = "cosine"


@dataclass(frozen=True, repr=False)
class _Piecewise(Schedule):
    """Step or linear interpolation through sorted ``(step, value)`` points."""

    points: tuple[tuple[int, float], ...]
    interpolation: str
    factory = "piecewise"

    def _value(self, step: int) -> float:
        index = bisect_right([point_step for point_step, _ in self.points], step) - 1
        if index < 0:
            return self.points[0][1]
        if index == len(self.points) - 1 or self.interpolation == "step":
            return self.points[index][1]
        (left_step, left_value), (right_step, right_value) = self.points[index], self.points[index + 1]
        return _interpolate(left_value, right_value, (step - left_step) / (right_step - left_step))


@dataclass(frozen=True, repr=False)
class _AfterStage(Schedule):
    """``schedule(step − start of stage)`` once the stage started, ``before`` until then (bound to a run)."""

    stage: str
    schedule: Schedule
    before: float
    factory = "after_stage"

    def bind(self, start_of) -> None:
        """Read the stage's start from ``start_of(stage) -> int | None`` (the trainer's ``CurriculumState``)."""
        object.__setattr__(self, "_start_of", start_of)

    def value_at(self, step: int, start: int | None) -> float:
        """The value at ``step`` when the stage starts at ``start`` (None: not started)."""
        step = _step_number(step, "after_stage schedule step")
        return self.before if start is None or step < start else self.schedule(step - start)

    def _value(self, step: int) -> float:
        start_of = getattr(self, "_start_of", None)
        if start_of is None and step == 0:  # GRPOConfig reads a scheduled epsilon at step 0 before any trainer exists
            return self.before
        if start_of is None:
            raise ValueError(
                f"{self!r} follows the start of stage {self.stage!r}, which only a trainer with a reward_schedule "
                "knows: use it in a GRPOConfig (the trainer binds it), or call value_at(step, start)."
            )
        return self.value_at(step, start_of(self.stage))

    def __getstate__(self) -> dict:
        return {"stage": self.stage, "schedule": self.schedule, "before": self.before}  # the binding stays behind

    def __setstate__(self, state: dict) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
