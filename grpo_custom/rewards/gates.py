"""Curriculum gates: a :class:`Gate` starts a reward stage when an evaluation metric says so, and
:class:`CurriculumState` follows the gates of one run (consecutive hits, the step each gate opened).

A gated stage behaves exactly like a stage with ``start=<the step its gate opened>``: the reward schedule
reads the opened steps from :meth:`CurriculumState.starts` (``RewardSchedule.weights_at(..., opened=...)``).
Pure Python (no torch, no trainer): the trainer's callback (``grpo_custom.fork.hooks.curriculum``) feeds it the
evaluation metrics (already gathered over processes) and the optimizer steps.
"""
from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from grpo_custom.rewards.scalar_schedule import _finite_number, _step_number

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
}


@dataclass(frozen=True, repr=False)
class Gate:
    """The start of a :class:`~grpo_custom.rewards.reward_schedule.Stage` decided by evaluation metrics.

    The condition is ``metrics[metric] <op> threshold`` on the metrics of one evaluation (keys as in
    ``trainer.state.log_history``, e.g. ``"eval_reward"`` or ``"eval_rewards/<function>/mean"``), or
    ``metric(metrics) -> bool`` when ``metric`` is a callable (then ``op`` and ``threshold`` stay None).
    A gate is watched once the stage before it has started (and finished its transition); the gate opens
    after the evaluation at step ``e`` at which the condition has held at ``patience`` consecutive watched
    evaluations, provided ``e >= min_step``; it opens at ``max_step`` at the latest, even if the condition
    never held. The stage then starts at that step, exactly like ``Stage(start=<step>)``.

    Args:
        metric: a logged evaluation metric key, or a callable ``metrics: dict -> bool``.
        op: ``">="``, ``">"``, ``"<="`` or ``"<"`` (a NaN value never satisfies it).
        threshold: a finite number.
        patience: consecutive evaluations (>= 1) at which the condition must hold.
        min_step: the gate never opens before this optimizer step (evaluations before it still count hits).
        max_step: the step at which the gate opens at the latest (None: only the condition opens it).

    Raises:
        ValueError/TypeError: naming the argument: an empty metric key, an unknown ``op``, ``op``/``threshold``
            missing for a key or given with a callable, a non-finite threshold, ``patience < 1``, a negative
            or non-integer step, ``max_step < min_step`` (or ``max_step`` 0: the first stage holds step 0).
    """

    metric: str | Callable[[dict], bool]
    op: str | None = None
    threshold: float | None = None
    patience: int = 1
    min_step: int = 0
    max_step: int | None = None

    def __post_init__(self) -> None:
        if callable(self.metric):
            if self.op is not None or self.threshold is not None:
                raise ValueError(
                    f"Gate with a callable metric {_name(self.metric)!r} decides by itself: leave op and threshold "
                    f"unset, got op={self.op!r}, threshold={self.threshold!r}."
                )
        else:
            if not isinstance(self.metric, str) or not self.metric:
                raise TypeError(f"Gate metric must be a logged metric key (str) or a callable, got {self.metric!r}.")
            if self.op not in OPERATORS:
                raise ValueError(f"Gate({self.metric!r}): op must be one of {', '.join(OPERATORS)}, got {self.op!r}.")
            object.__setattr__(self, "threshold", _finite_number(self.threshold, f"Gate({self.metric!r}) threshold"))
        if isinstance(self.patience, bool) or not isinstance(self.patience, numbers.Integral) or self.patience < 1:
            raise ValueError(f"{self!r}: patience must be an integer >= 1, got {self.patience!r}.")
        object.__setattr__(self, "min_step", _step_number(self.min_step, f"{self!r}: min_step"))
        if self.max_step is not None:
            max_step = _step_number(self.max_step, f"{self!r}: max_step")
            if max_step < max(self.min_step, 1):
                raise ValueError(
                    f"{self!r}: max_step must be >= min_step ({self.min_step}) and >= 1, got {max_step}."
                )
            object.__setattr__(self, "max_step", max_step)

    def evaluate(self, metrics: Mapping[str, object]) -> tuple[bool, float]:
        """``(condition held, value)`` for one evaluation's metrics (value: the metric, or 1.0/0.0 for a callable).

        Raises:
            KeyError: the metric key is not in ``metrics``; the message lists the keys that exist.
            TypeError: the metric is not a real number, or a callable returned something other than a bool.
        """
        if callable(self.metric):
            result = self.metric(dict(metrics))
            if not isinstance(result, bool) and type(result).__name__ != "bool_":  # numpy.bool_ too
                raise TypeError(f"Gate callable {_name(self.metric)!r} must return a bool, got {result!r}.")
            return bool(result), float(bool(result))
        if self.metric not in metrics:
            raise KeyError(
                f"{self!r}: the evaluation logged no metric {self.metric!r}. Logged keys: "
                f"{', '.join(sorted(map(str, metrics)))}."
            )
        value = metrics[self.metric]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{self!r}: metric {self.metric!r} is {value!r}, not a number.")
        value = float(value)
        return (not math.isnan(value)) and OPERATORS[self.op](value, self.threshold), value

    def describe(self) -> str:
        """``eval_reward >= 0.8`` (or the callable's name) for log lines."""
        return f"{_name(self.metric)}(metrics)" if callable(self.metric) else f"{self.metric} {self.op} {self.threshold:g}"

    def __repr__(self) -> str:
        if callable(self.metric):
            parts = [_name(self.metric)]
        else:
            parts = [repr(self.metric), repr(self.op), repr(self.threshold)]
        defaults = {"patience": 1, "min_step": 0, "max_step": None}
        parts += [f"{key}={getattr(self, key)!r}" for key, default in defaults.items() if getattr(self, key) != default]
        return f"Gate({', '.join(parts)})"


def _name(function: Callable) -> str:
    return getattr(function, "__name__", type(function).__name__)


def as_gate(start: object) -> Gate | None:
    """``start`` as a :class:`Gate` when it is one or a callable (a bare ``metrics -> bool``), else None."""
    if isinstance(start, Gate):
        return start
    if callable(start):
        return Gate(start)
    return None


@dataclass
class GateState:
    """One gate's state in a run: consecutive hits, the last value seen, when and why it opened."""

    hits: int = 0
    value: float | None = None
    opened_at: int | None = None
    reason: str = ""  # "condition" or "max_step" once open
    evaluations: int = 0  # watched evaluations seen

    def to_dict(self) -> dict:
        return {"hits": self.hits, "value": self.value, "opened_at": self.opened_at, "reason": self.reason,
                "evaluations": self.evaluations}


@dataclass
class CurriculumState:
    """The gates of one run over a reward schedule: which are watched, their hits, the steps they opened.

    Args:
        schedule: a ``RewardSchedule`` (fractional starts resolved with ``max_steps`` once it is known).
        max_steps: the run's ``max_steps`` (needed only for fractional starts).
    """

    schedule: object
    max_steps: int | None = None
    gates: dict[str, GateState] = field(default_factory=dict)
    keys_checked: bool = False

    def __post_init__(self) -> None:
        self.gates = {stage.name: GateState() for _, stage in self.schedule.gated_stages}

    def resolved(self):
        """The schedule with fractional starts resolved (``max_steps`` needed only when it has some)."""
        return self.schedule.resolve(self.max_steps) if self.schedule.has_fractional_starts else self.schedule

    def starts(self) -> dict[str, int]:
        """Gated stage name → the step its gate opened, for the gates that have opened."""
        return {name: state.opened_at for name, state in self.gates.items() if state.opened_at is not None}

    def start_of(self, stage_name: str) -> int | None:
        """The step stage ``stage_name`` started or starts at (None: a gate not yet open).

        Raises:
            ValueError: no stage of that name (the message lists the stages).
        """
        for stage in self.resolved().stages:
            if stage.name == stage_name:
                return self.gates[stage_name].opened_at if stage_name in self.gates else stage.start
        names = [stage.name for stage in self.schedule.stages]
        raise ValueError(f"No reward schedule stage named {stage_name!r}; the stages are {names}.")

    def watched(self, step: int) -> tuple[int, object, GateState] | None:
        """``(index, stage, state)`` of the gate watched at ``step``, if any.

        The first gate not yet open is watched once the stage before it has started at ``s`` and ``step >=
        s + max(transition, 1)`` (its transition is over, and the gate never opens on the step its
        predecessor started).
        """
        stages = self.resolved().stages
        previous_start = None
        for index, stage in enumerate(stages):
            state = self.gates.get(stage.name)
            if state is None:
                previous_start = stage.start
                continue
            if state.opened_at is not None:
                previous_start = state.opened_at
                continue
            earliest = previous_start + max(stages[index - 1].transition, 1)
            return (index, stage, state) if step >= earliest else None
        return None

    def reach(self, step: int) -> list[tuple[int, object, GateState]]:
        """Open every watched gate whose ``max_step`` is ``<= step``, at its ``max_step``; returns what opened."""
        opened = []
        while (found := self.watched(step)) is not None:
            index, stage, state = found
            if stage.start.max_step is None or step < stage.start.max_step:
                break
            state.opened_at, state.reason = stage.start.max_step, "max_step"
            opened.append(found)
        return opened

    def evaluation(self, step: int, metrics: Mapping[str, object]) -> list[tuple[int, object, GateState]]:
        """Feed the metrics of the evaluation at optimizer step ``step``; returns the gates that opened.

        Max-step openings up to ``step`` come first (:meth:`reach`). At the first evaluation every gate's metric
        key is checked (an unknown key raises ``KeyError`` listing the logged keys). Then the watched gate counts
        a hit (condition held) or resets to 0, and opens at ``step`` when ``hits >= patience`` and
        ``step >= min_step``.
        """
        opened = self.reach(step)
        if not self.keys_checked:
            for _, stage in self.schedule.gated_stages:
                if not callable(stage.start.metric) and stage.start.metric not in metrics:
                    stage.start.evaluate(metrics)  # raises the KeyError naming the logged keys
            self.keys_checked = True
        found = self.watched(step)
        if found is None:
            return opened
        index, stage, state = found
        held, value = stage.start.evaluate(metrics)
        state.value, state.evaluations = value, state.evaluations + 1
        state.hits = state.hits + 1 if held else 0
        if state.hits >= stage.start.patience and step >= stage.start.min_step:
            state.opened_at, state.reason = step, "condition"
            opened.append(found)
        return opened

    def state_dict(self) -> dict:
        """JSON-ready state: every gate's state and its :class:`Gate` repr (to refuse a changed gate on resume)."""
        gates = dict(self.schedule.gated_stages_by_name)
        return {"gates": {name: {**state.to_dict(), "gate": repr(gates[name].start)}
                          for name, state in self.gates.items()},
                "keys_checked": self.keys_checked}

    def load_state_dict(self, state: Mapping, where: str, allow_change: bool = False) -> None:
        """Restore :meth:`state_dict` output read from ``where`` (a file, for messages).

        Raises:
            ValueError: a gated stage's gate differs from the checkpoint's (or the gated stages differ), naming the
                stage and both gates, unless ``allow_change`` (then the unchanged stages' states are restored and
                the changed ones start afresh).
        """
        saved = dict(state.get("gates", {}))
        current = dict(self.schedule.gated_stages_by_name)
        changed = [f"stage {name!r}: {saved[name].get('gate') if name in saved else 'not gated'} in the checkpoint, "
                   f"{repr(current[name].start) if name in current else 'not gated'} now"
                   for name in sorted(set(saved) | set(current))
                   if name not in saved or name not in current or saved[name].get("gate") != repr(current[name].start)]
        if changed and not allow_change:
            raise ValueError(
                f"Resuming from {where} with changed curriculum gates: {'; '.join(changed)}. Resume with the "
                "checkpoint's gates, or set resume_allow_config_change=True to continue with the new ones."
            )
        for name, entry in saved.items():
            if name in self.gates and entry.get("gate") == repr(current[name].start):
                self.gates[name] = GateState(hits=int(entry["hits"]), value=entry.get("value"),
                                             opened_at=entry.get("opened_at"), reason=entry.get("reason", ""),
                                             evaluations=int(entry.get("evaluations", 0)))
        self.keys_checked = bool(state.get("keys_checked", False))
