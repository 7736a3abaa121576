"""Reward weights by training stage (:class:`Stage`, :class:`RewardSchedule`); pure functions of the step and
of the steps gated stages opened at (resumable, picklable). :func:`blend` lives in :mod:`.blend`."""
from __future__ import annotations

import math
import numbers
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from grpo_custom.rewards.gates import Gate, as_gate
from grpo_custom.rewards.scalar_schedule import BLENDS, _finite_number, _interpolate, _mix, _step_number


@dataclass(frozen=True)
class Stage:
    """One stage of a :class:`RewardSchedule` (validated by the schedule, whose errors name the stage).

    Args:
        start: first step of the stage: an integer step >= 0, or a float fraction of ``max_steps`` in
            ``[0, 1)`` (resolved to ``floor(fraction·max_steps + 0.5)``). ``0`` and ``0.0`` both mean step 0.
            Or a :class:`~grpo_custom.rewards.gates.Gate` (or a callable ``metrics -> bool``, a gate with
            default options): the stage starts at the step its gate opens (see ``docs/reward_schedules.md``).
        weights: reward name → weight in this stage. A name missing here keeps the previous stage's
            weight; the first stage must name every reward that any stage names.
        blend: how the stage takes over from the previous one: ``"step"`` (immediately),
            ``"linear"`` or ``"cosine"`` (over ``transition`` steps).
        transition: number of steps ``w`` of the blend; the previous weights hold exactly at
            ``start`` and this stage's at ``start + w``. Must be 0 for ``blend="step"``.
        name: stage name for logging; defaults to ``f"stage{index}"``.
    """

    start: int | float | Gate | Callable[[dict], bool]
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

    Gated stages (``start`` a :class:`Gate`) start at the step their gate opened, passed as ``opened`` (stage
    name → step; the trainer keeps it in a ``CurriculumState``); until then they have not started. Every stage
    after a gated stage must be gated too, and a ``max_step`` must come after the latest possible start of the
    stage before (plus its transition).

    Args:
        stages: the stages in order; the first must start at 0 (it cannot be gated).

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
        _check_gates(self._stages)
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
    def gated_stages(self) -> tuple[tuple[int, Stage], ...]:
        """``(index, stage)`` of every stage whose start is a :class:`Gate`."""
        return tuple((index, stage) for index, stage in enumerate(self._stages) if isinstance(stage.start, Gate))

    @property
    def gated_stages_by_name(self) -> dict[str, Stage]:
        """Stage name → stage, for the gated stages."""
        return {stage.name: stage for _, stage in self.gated_stages}

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

    def weights_at(self, step: int, max_steps: int | None = None, opened: Mapping[str, int] | None = None
                   ) -> dict[str, float]:
        """Reward name → weight at ``step`` (``max_steps`` is needed when some start is fractional; ``opened``:
        gated stage name → the step its gate opened, for the gates open so far)."""
        schedule, index, mix = self._locate(step, max_steps, opened)
        own = schedule._full_weights[index]
        if mix == 1.0:
            return dict(own)
        previous = schedule._full_weights[index - 1]
        return {name: _interpolate(previous[name], own[name], mix) for name in own}

    def stage_at(self, step: int, max_steps: int | None = None, opened: Mapping[str, int] | None = None) -> str:
        """Name of the last stage whose start has been reached (during a transition, the new stage)."""
        schedule, index, _ = self._locate(step, max_steps, opened)
        return schedule._stages[index].name

    def mix_at(self, step: int, max_steps: int | None = None, opened: Mapping[str, int] | None = None) -> float:
        """Transition progress ``m`` of the current stage (0 at its start), 1.0 when not transitioning."""
        return self._locate(step, max_steps, opened)[2]

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

    def _locate(self, step: int, max_steps: int | None, opened: Mapping[str, int] | None = None
                ) -> tuple[RewardSchedule, int, float]:
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
        starts = _effective_starts(schedule._stages, opened or {})
        index = bisect_right(starts, step) - 1
        stage, start = schedule._stages[index], starts[index]
        if stage.transition == 0 or step >= start + stage.transition:
            return schedule, index, 1.0
        return schedule, index, _mix(stage.blend, (step - start) / stage.transition)

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
    gate = as_gate(start) if not isinstance(start, numbers.Number) else None
    if gate is not None:
        if index == 0:
            raise ValueError(f"{where}: the first stage must start at 0, it cannot be gated (got {gate!r}).")
        start = gate
    elif isinstance(start, float):
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
    if index == 0 and not isinstance(start, Gate) and start != 0:
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


def _check_gates(stages: Sequence[Stage]) -> None:
    """After a gated stage every stage is gated (a fixed step could come before the gate opens)."""
    gated = [index for index, stage in enumerate(stages) if isinstance(stage.start, Gate)]
    for index in range(gated[0] + 1 if gated else len(stages), len(stages)):
        stage = stages[index]
        if not isinstance(stage.start, Gate):
            raise ValueError(
                f"{_describe(index, stage)}: starts at {stage.start!r} after the gated {_describe(gated[0], stages[gated[0]])}, "
                f"whose start is not known in advance; gate it too, e.g. start=Gate(..., min_step=...)."
            )


def _effective_starts(stages: Sequence[Stage], opened: Mapping[str, int]) -> list[int]:
    """The start steps of the stages that have a start: fixed ones, then gated ones while their gate has opened."""
    unknown = sorted(set(opened) - {stage.name for stage in stages if isinstance(stage.start, Gate)})
    if unknown:
        raise ValueError(f"RewardSchedule opened= names {unknown}, which are not gated stages.")
    starts = []
    for index, stage in enumerate(stages):
        if not isinstance(stage.start, Gate):
            starts.append(stage.start)
            continue
        if opened.get(stage.name) is None:
            break
        start = _step_number(opened[stage.name], f"{_describe(index, stage)}: opened step")
        if start < starts[-1] + max(stages[index - 1].transition, 1):
            raise ValueError(
                f"{_describe(index, stage)}: opened at step {start}, before {_describe(index - 1, stages[index - 1])} "
                f"(start {starts[-1]}, transition {stages[index - 1].transition}) let its gate be watched."
            )
        starts.append(start)
    return starts


def _latest_start(stage: Stage) -> int | None:
    """The latest step ``stage`` can start at: its fixed start, its gate's ``max_step``, or None (unbounded)."""
    return stage.start.max_step if isinstance(stage.start, Gate) else stage.start


def _check_resolved(stages: Sequence[Stage], max_steps: int | None = None) -> None:
    """Integer starts strictly increasing and each transition ending by the next stage's start; a gate's
    ``max_step`` after the latest start (plus transition) of the stage before it."""
    context = "" if max_steps is None else f" (with max_steps={max_steps})"
    for index in range(1, len(stages)):
        previous, current = stages[index - 1], stages[index]
        if isinstance(current.start, Gate):
            if current.start.max_step is None:
                continue
            latest = _latest_start(previous)
            if latest is None:
                raise ValueError(
                    f"{_describe(index, current)}: its gate has max_step {current.start.max_step}, but "
                    f"{_describe(index - 1, previous)} is gated without max_step, so it may start later; give that "
                    "gate a max_step too (or drop this one)."
                )
            if current.start.max_step < latest + max(previous.transition, 1):
                raise ValueError(
                    f"{_describe(index, current)}: its gate's max_step {current.start.max_step} comes before "
                    f"{_describe(index - 1, previous)} can have started and finished its transition (step "
                    f"{latest} + {max(previous.transition, 1)}){context}."
                )
            continue
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


from grpo_custom.rewards.blend import blend  # noqa: E402  (re-exported: its historic home)
