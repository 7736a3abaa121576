"""Reward weights by training stage (:class:`Stage`, :class:`RewardSchedule`) and :func:`blend`, one TRL
reward function mixing two by a scalar schedule; pure functions of the step (resumable, picklable)."""
from __future__ import annotations

import inspect
import math
import numbers
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from grpo_custom.rewards.scalar_schedule import BLENDS, _finite_number, _interpolate, _mix, _step_number


@dataclass(frozen=True)
class Stage:
    """One stage of a :class:`RewardSchedule` (validated by the schedule, whose errors name the stage).

    Args:
        start: first step of the stage: an integer step >= 0, or a float fraction of ``max_steps`` in
            ``[0, 1)`` (resolved to ``floor(fraction·max_steps + 0.5)``). ``0`` and ``0.0`` both mean step 0.
        weights: reward name → weight in this stage. A name missing here keeps the previous stage's
            weight; the first stage must name every reward that any stage names.
        blend: how the stage takes over from the previous one: ``"step"`` (immediately),
            ``"linear"`` or ``"cosine"`` (over ``transition`` steps).
        transition: number of steps ``w`` of the blend; the previous weights hold exactly at
            ``start`` and this stage's at ``start + w``. Must be 0 for ``blend="step"``.
        name: stage name for logging; defaults to ``f"stage{index}"``.
    """

    start: int | float
    weights: Mapping[str, float]
    blend: str = "step"
    transition: int = 0
    name: str | None = None


class RewardSchedule:
    """Reward weights by training stage, with optional smooth transitions between stages.

    At step ``s`` the current stage is the last one whose start ``t`` has been reached. If that
    stage has ``transition = w > 0`` and ``s < t + w``, the weights are
    ``(1 − m)·previous + m·own`` with ``u = (s − t)/w`` and ``m = u`` (linear) or
    ``(1 − cos(π·u))/2`` (cosine); otherwise they are the stage's own weights. A reward name
    missing in a stage inherits the previous stage's weight. Everything is a pure function of the
    step, so resuming from a checkpoint reproduces the uninterrupted run.

    Args:
        stages: the stages in order; the first must start at 0.

    Raises:
        ValueError: empty stages, a first stage not at 0, starts not strictly increasing, a
            transition overlapping the next stage, a negative or non-integer transition, a
            transition on a ``"step"`` blend or on the first stage, an unknown blend, a fractional
            start outside ``[0, 1)``, a non-numeric or non-finite weight, a reward first named after
            the first stage, or duplicate stage names. Each message names the stage (index and name)
            and the offending value. Order checks involving fractional starts run in :meth:`resolve`.
    """

    def __init__(self, stages: Sequence[Stage]):
        if isinstance(stages, Stage) or not isinstance(stages, Sequence) or len(stages) == 0:
            raise ValueError(f"RewardSchedule needs a non-empty list of Stage objects, got {stages!r}.")
        checked: list[Stage] = []
        for index, stage in enumerate(stages):
            if not isinstance(stage, Stage):
                raise ValueError(f"RewardSchedule stage {index} must be a Stage, got {type(stage).__name__}.")
            checked.append(_checked_stage(index, stage))
        _check_unique_names(checked)
        _check_first_stage_names_every_reward(checked)
        self._stages = tuple(checked)
        self._full_weights = _inherited_weights(self._stages)
        _check_order(self._stages, int)
        _check_order(self._stages, float)
        if not self.has_fractional_starts:
            _check_resolved(self._stages)

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The validated stages, with names assigned and ``0.0`` starts normalised to ``0``."""
        return self._stages

    @property
    def has_fractional_starts(self) -> bool:
        """Whether some stage starts at a fraction of ``max_steps`` (so ``max_steps`` is needed)."""
        return any(isinstance(stage.start, float) for stage in self._stages)

    @property
    def reward_names(self) -> set[str]:
        """Every reward name that some stage weights."""
        return set(self._full_weights[0])

    def resolve(self, max_steps: int) -> RewardSchedule:
        """The same schedule with fractional starts turned into steps (``floor(fraction·max_steps + 0.5)``).

        Raises:
            ValueError: ``max_steps`` not a positive integer, or the resolved starts out of order
                or overlapping a transition (naming the stage and both starts).
        """
        max_steps = _step_number(max_steps, "RewardSchedule max_steps")
        if max_steps == 0:
            raise ValueError("RewardSchedule max_steps must be positive, got 0.")
        if not self.has_fractional_starts:
            return self
        resolved = tuple(
            replace(stage, start=math.floor(stage.start * max_steps + 0.5)) if isinstance(stage.start, float) else stage
            for stage in self._stages
        )
        _check_resolved(resolved, max_steps)
        return RewardSchedule(resolved)

    def weights_at(self, step: int, max_steps: int | None = None) -> dict[str, float]:
        """Reward name → weight at ``step`` (``max_steps`` is needed when some start is fractional)."""
        schedule, index, mix = self._locate(step, max_steps)
        own = schedule._full_weights[index]
        if mix == 1.0:
            return dict(own)
        previous = schedule._full_weights[index - 1]
        return {name: _interpolate(previous[name], own[name], mix) for name in own}

    def stage_at(self, step: int, max_steps: int | None = None) -> str:
        """Name of the last stage whose start has been reached (during a transition, the new stage)."""
        schedule, index, _ = self._locate(step, max_steps)
        return schedule._stages[index].name

    def mix_at(self, step: int, max_steps: int | None = None) -> float:
        """Transition progress ``m`` of the current stage (0 at its start), 1.0 when not transitioning."""
        return self._locate(step, max_steps)[2]

    def validate_reward_names(self, names: Sequence[str]) -> None:
        """Check that every weighted reward name is one of the reward functions ``names``.

        Raises:
            ValueError: naming each schedule weight key that matches no reward function and listing
                the reward function names.
        """
        unknown = sorted(self.reward_names - set(names))
        if unknown:
            raise ValueError(
                f"RewardSchedule weights name rewards that match no reward function: {', '.join(map(repr, unknown))}. "
                f"Reward functions: {', '.join(map(repr, names)) or '(none)'}."
            )

    def _locate(self, step: int, max_steps: int | None) -> tuple[RewardSchedule, int, float]:
        """(resolved schedule, index of the current stage, its mix) at ``step``."""
        step = _step_number(step, "RewardSchedule step")
        if max_steps is not None:
            schedule = self.resolve(max_steps)
        elif self.has_fractional_starts:
            fractional = ", ".join(
                f"stage {index} ({stage.name!r}) starts at fraction {stage.start!r}"
                for index, stage in enumerate(self._stages)
                if isinstance(stage.start, float)
            )
            raise ValueError(
                f"RewardSchedule needs max_steps to resolve fractional starts ({fractional}); pass max_steps=... "
                "or call resolve(max_steps) first."
            )
        else:
            schedule = self
        starts = [stage.start for stage in schedule._stages]
        index = bisect_right(starts, step) - 1
        stage = schedule._stages[index]
        if stage.transition == 0 or step >= stage.start + stage.transition:
            return schedule, index, 1.0
        return schedule, index, _mix(stage.blend, (step - stage.start) / stage.transition)

    def __repr__(self) -> str:
        return f"RewardSchedule({list(self._stages)!r})"


def _describe(index: int, stage: Stage) -> str:
    """``stage 2 ('warmup')`` for error messages."""
    return f"stage {index} ({stage.name!r})"


def _checked_stage(index: int, stage: Stage) -> Stage:
    """``stage`` validated on its own, with its default name, ``0.0`` start → ``0`` and float weights."""
    name = f"stage{index}" if stage.name is None else stage.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"RewardSchedule stage {index}: name must be a non-empty string, got {name!r}.")
    stage = replace(stage, name=name)
    where = _describe(index, stage)
    start = stage.start
    if isinstance(start, float):
        if not 0.0 <= start < 1.0:
            raise ValueError(f"{where}: a fractional start must be in [0, 1), got {start!r}.")
        start = 0 if start == 0.0 else start
    else:
        start = _step_number(start, f"{where}: start")
    if stage.blend not in BLENDS:
        raise ValueError(f"{where}: blend must be one of {', '.join(BLENDS)}, got {stage.blend!r}.")
    transition = _step_number(stage.transition, f"{where}: transition")
    if stage.blend == "step" and transition != 0:
        raise ValueError(
            f"{where}: blend 'step' switches immediately, so transition must be 0, got {transition}; "
            "use blend 'linear' or 'cosine' for a gradual transition."
        )
    if index == 0 and transition != 0:
        raise ValueError(f"{where}: the first stage has no previous stage to blend from, got transition {transition}.")
    if not isinstance(stage.weights, Mapping):
        raise ValueError(f"{where}: weights must be a dict of reward name → weight, got {stage.weights!r}.")
    weights = {}
    for key, weight in stage.weights.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: weight keys must be non-empty reward names, got {key!r}.")
        weights[key] = _finite_number(weight, f"{where}: weight {key!r}")
    if index == 0 and start != 0:
        raise ValueError(f"{where}: the first stage must start at 0, got {stage.start!r}.")
    return replace(stage, start=start, transition=transition, weights=weights)


def _check_unique_names(stages: Sequence[Stage]) -> None:
    """Stage names identify stages in logs, so they must differ."""
    seen: dict[str, int] = {}
    for index, stage in enumerate(stages):
        if stage.name in seen:
            raise ValueError(
                f"{_describe(index, stage)}: the name {stage.name!r} is already used by stage {seen[stage.name]}."
            )
        seen[stage.name] = index


def _check_first_stage_names_every_reward(stages: Sequence[Stage]) -> None:
    """A missing key inherits the previous weight, so the first stage must give every key a starting weight."""
    first = stages[0]
    if not first.weights:
        raise ValueError(f"{_describe(0, first)}: the first stage must weight at least one reward, got {{}}.")
    for index, stage in enumerate(stages[1:], start=1):
        new = sorted(set(stage.weights) - set(first.weights))
        if new:
            raise ValueError(
                f"{_describe(index, stage)}: weights {', '.join(map(repr, new))} are missing from the first stage "
                f"{first.name!r}; a missing weight inherits the previous stage's, so the first stage must name "
                "every reward."
            )


def _inherited_weights(stages: Sequence[Stage]) -> tuple[dict[str, float], ...]:
    """Each stage's full weights: its own, plus the previous stage's for the names it leaves out."""
    full = [dict(stages[0].weights)]
    for stage in stages[1:]:
        full.append({**full[-1], **stage.weights})
    return tuple(full)


def _check_order(stages: Sequence[Stage], kind: type) -> None:
    """Starts of one kind (int steps or float fractions) must be strictly increasing in list order."""
    of_kind = [(index, stage) for index, stage in enumerate(stages) if isinstance(stage.start, kind)]
    for (_, previous), (index, current) in zip(of_kind, of_kind[1:]):
        if current.start <= previous.start:
            raise ValueError(
                f"{_describe(index, current)}: starts must be strictly increasing, got start {current.start!r} "
                f"after an earlier stage's start {previous.start!r}."
            )


def _check_resolved(stages: Sequence[Stage], max_steps: int | None = None) -> None:
    """Integer starts strictly increasing and each transition ending by the next stage's start."""
    context = "" if max_steps is None else f" (with max_steps={max_steps})"
    for index in range(1, len(stages)):
        previous, current = stages[index - 1], stages[index]
        if current.start <= previous.start:
            raise ValueError(
                f"{_describe(index, current)}: starts must be strictly increasing, got start {current.start}{context} "
                f"after {_describe(index - 1, previous)} start {previous.start}."
            )
        if previous.start + previous.transition > current.start:
            raise ValueError(
                f"{_describe(index - 1, previous)}: its transition of {previous.transition} steps from start "
                f"{previous.start} overlaps {_describe(index, current)} starting at {current.start}{context}."
            )


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
        """Call ``reward`` and check it gives one finite-or-None number per completion."""
        reward_name = getattr(reward, "__name__", repr(reward))
        scores = reward(**arguments)
        expected = len(arguments["completions"])
        if scores is None or isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence):
            raise TypeError(
                f"Blended reward {self.__name__!r}: inner reward {reward_name!r} must return a list of "
                f"{expected} values, got {type(scores).__name__}."
            )
        if len(scores) != expected:
            raise ValueError(
                f"Blended reward {self.__name__!r}: inner reward {reward_name!r} returned {len(scores)} values "
                f"for {expected} completions."
            )
        checked = []
        for index, score in enumerate(scores):
            if score is not None and (isinstance(score, bool) or not isinstance(score, numbers.Real)):
                raise TypeError(
                    f"Blended reward {self.__name__!r}: inner reward {reward_name!r} returned {score!r} for sample "
                    f"{index}; expected a number or None."
                )
            checked.append(None if score is None else float(score))
        return checked

    def __repr__(self) -> str:
        return f"blend({self.reward_a!r}, {self.reward_b!r}, {self.schedule!r}, name={self.__name__!r})"
