"""Gates and gated reward schedules without a trainer: validation, the opening rule step by step, state round trip,
and ``Schedule.after_stage`` (issue 23)."""
from __future__ import annotations

import json
import math
import pickle

import pytest

from grpo_custom import Gate, RewardSchedule, Schedule, Stage
from grpo_custom.rewards.gates import CurriculumState


def _schedule(*gates, transition=0):
    stages = [Stage(0, {"a": 1.0, "b": 0.0}, name="first")]
    for index, gate in enumerate(gates):
        stages.append(Stage(gate, {"a": 0.0, "b": float(index + 1)}, name=f"g{index}",
                            blend="linear" if transition else "step", transition=transition))
    return RewardSchedule(stages)


def _run(state, values, every=2):
    """Feed evaluations at steps every, 2·every, ... with ``{"m": value}``; steps end at each optimizer step."""
    for number, value in enumerate(values, start=1):
        step = number * every
        for previous in range(step - every + 1, step + 1):
            state.reach(previous)
        state.evaluation(step, {"m": value, "other": 0.0})
    return state.starts()


def test_gate_validation_names_the_argument():
    with pytest.raises(ValueError, match=r"op must be one of >=, >, <=, <, got '=='"):
        Gate("m", "==", 1.0)
    with pytest.raises(ValueError, match=r"threshold must be finite"):
        Gate("m", ">=", math.nan)
    with pytest.raises(ValueError, match=r"patience must be an integer >= 1, got 0"):
        Gate("m", ">=", 1.0, patience=0)
    with pytest.raises(ValueError, match=r"max_step must be >= min_step \(5\) and >= 1, got 3"):
        Gate("m", ">=", 1.0, min_step=5, max_step=3)
    with pytest.raises(ValueError, match=r"callable metric 'f' decides by itself"):
        def f(metrics):
            return True
        Gate(f, ">=", 1.0)
    with pytest.raises(ValueError, match=r"stage 0 \('first'\): the first stage must start at 0, it cannot be gated"):
        RewardSchedule([Stage(Gate("m", ">=", 1.0), {"a": 1.0}, name="first")])
    with pytest.raises(ValueError, match=r"stage 2 \('late'\): starts at 10 after the gated stage 1"):
        RewardSchedule([Stage(0, {"a": 1.0}), Stage(Gate("m", ">=", 1.0), {"a": 2.0}), Stage(10, {"a": 3.0}, name="late")])
    with pytest.raises(ValueError, match=r"stage 2 \('g1'\): its gate has max_step 9, but stage 1 \('g0'\) is gated "
                                         r"without max_step"):
        _schedule(Gate("m", ">=", 1.0), Gate("m", ">=", 2.0, max_step=9))
    with pytest.raises(ValueError, match=r"stage 2 \('g1'\): its gate's max_step 6 comes before stage 1 \('g0'\) can "
                                         r"have started and finished its transition \(step 5 \+ 2\)"):
        _schedule(Gate("m", ">=", 1.0, max_step=5), Gate("m", ">=", 2.0, max_step=6), transition=2)


@pytest.mark.parametrize("gate, values, opened", [
    (Gate("m", ">=", 0.5), [0.1, 0.6, 0.2], 4),                       # first hit
    (Gate("m", ">=", 0.5, patience=2), [0.6, 0.1, 0.6, 0.7], 8),      # a miss resets the count
    (Gate("m", ">", 0.5, patience=2, min_step=9), [0.6, 0.6, 0.6, 0.6, 0.6], 10),
    (Gate("m", "<", 0.5, max_step=5), [0.9, 0.9, 0.9, 0.9], 5),       # never holds: opens at max_step
    (Gate("m", "<=", 0.5), [math.nan, 0.5], 4),                        # NaN never satisfies
], ids=["first_hit", "patience_reset", "min_step", "max_step", "nan"])
def test_gate_opens_at_the_rule_step(gate, values, opened):
    state = CurriculumState(_schedule(gate))
    assert _run(state, values) == {"g0": opened}


def test_later_gate_is_watched_only_after_the_previous_stage_and_its_transition():
    schedule = _schedule(Gate("m", ">=", 0.5), Gate("m", ">=", 0.5), transition=3)
    state = CurriculumState(schedule)
    # g0 opens at 2; g1 is watched from 2 + 3 = 5, so the evaluations at 4 do not count, the one at 6 does.
    assert _run(state, [0.9, 0.9, 0.9]) == {"g0": 2, "g1": 6}
    assert state.gates["g1"].evaluations == 1
    # the weights are those of the same schedule with fixed starts
    fixed = RewardSchedule([Stage(0, {"a": 1.0, "b": 0.0}, name="first"),
                            Stage(2, {"a": 0.0, "b": 1.0}, blend="linear", transition=3, name="g0"),
                            Stage(6, {"a": 0.0, "b": 2.0}, blend="linear", transition=3, name="g1")])
    for step in range(12):
        assert schedule.weights_at(step, opened=state.starts()) == fixed.weights_at(step), step
        assert schedule.stage_at(step, opened=state.starts()) == fixed.stage_at(step), step
    assert schedule.weights_at(7) == {"a": 1.0, "b": 0.0}  # no gate open: the first stage


def test_unknown_metric_key_lists_the_logged_keys_at_the_first_evaluation():
    state = CurriculumState(_schedule(Gate("m", ">=", 0.5), Gate("eval_typo", ">=", 0.5)))
    with pytest.raises(KeyError, match=r"no metric 'eval_typo'\. Logged keys: m, other"):
        state.evaluation(2, {"m": 0.0, "other": 1.0})


def test_state_round_trip_and_a_changed_gate_is_refused_by_stage_name():
    gate = Gate("m", ">=", 0.5, patience=3)
    state = CurriculumState(_schedule(gate))
    _run(state, [0.9, 0.9])
    saved = json.loads(json.dumps(state.state_dict()))
    restored = CurriculumState(_schedule(Gate("m", ">=", 0.5, patience=3)))
    restored.load_state_dict(saved, "ckpt/grpo_custom_state.json")
    assert restored.gates == state.gates and restored.gates["g0"].hits == 2
    changed = CurriculumState(_schedule(Gate("m", ">=", 0.6, patience=3)))
    with pytest.raises(ValueError, match=r"stage 'g0': Gate\('m', '>=', 0.5, patience=3\) in the checkpoint, "
                                         r"Gate\('m', '>=', 0.6, patience=3\) now"):
        changed.load_state_dict(saved, "ckpt/grpo_custom_state.json")
    changed.load_state_dict(saved, "ckpt", allow_change=True)
    assert changed.gates["g0"].hits == 0  # a changed gate starts afresh


def test_after_stage_schedule_counts_from_the_stage_start():
    kl = Schedule.after_stage("strict", Schedule.linear(0.0, 0.05, 0, 50))
    assert repr(kl).startswith("Schedule.after_stage(stage='strict', schedule=Schedule.linear(")
    assert [kl.value_at(step, 20) for step in (0, 19, 20, 45, 70, 100)] == pytest.approx(
        [0.0, 0.0, 0.0, 0.025, 0.05, 0.05])
    assert kl.value_at(100, None) == 0.0  # not started
    assert Schedule.after_stage("s", Schedule.constant(2.0), before=0.5).value_at(3, None) == 0.5
    with pytest.raises(ValueError, match=r"only a trainer with a reward_schedule knows"):
        kl(10)
    starts = {"strict": 20}
    kl.bind(starts.get)
    assert kl(45) == pytest.approx(0.025)
    copy = pickle.loads(pickle.dumps(kl))  # the binding stays behind
    assert copy == kl and copy.value_at(45, 20) == pytest.approx(0.025)
    with pytest.raises(ValueError, match=r"only a trainer"):
        copy(45)
