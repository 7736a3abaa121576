"""Tests for grpo_custom.rewards.scalar_schedule and reward_schedule: scalar schedules, staged reward weights and blended rewards."""
import functools
import math
import pickle
import random
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_custom.rewards.reward_schedule import RewardSchedule, Stage, blend
from grpo_custom.rewards.scalar_schedule import Schedule

# ---------------------------------------------------------------- scalar schedules


def test_constant_schedule_is_the_value_everywhere():
    schedule = Schedule.constant(0.3)
    assert [schedule(step) for step in (0, 1, 10**9)] == [0.3, 0.3, 0.3]


def test_linear_schedule_hand_values_and_constant_outside():
    schedule = Schedule.linear(1.0, 0.0, 10, 20)
    expected = {0: 1.0, 10: 1.0, 12: 0.8, 15: 0.5, 20: 0.0, 30: 0.0}
    for step, value in expected.items():
        assert schedule(step) == pytest.approx(value, abs=1e-15), step


def test_cosine_schedule_hand_values():
    schedule = Schedule.cosine(1.0, 0.0, 10, 20)
    # u = 0.2: (1 + cos(36°)) / 2 with cos(36°) = 0.8090169943749475
    assert schedule(12) == pytest.approx(0.9045084971874737, abs=1e-15)
    assert schedule(5) == 1.0 and schedule(20) == 0.0 and schedule(25) == 0.0
    # u = 0.25 from 2 to 4: 4 + (2 − 4)·(1 + cos(π/4))/2 = 4 − 1.7071067811865475
    assert Schedule.cosine(2.0, 4.0, 0, 4)(1) == pytest.approx(2.2928932188134525, abs=1e-15)


def test_cosine_schedule_symmetric_midpoint_is_the_average():
    schedule = Schedule.cosine(3.0, -1.0, 100, 300)
    assert schedule(200) == pytest.approx(1.0, abs=1e-15)
    # point symmetry about the midpoint: v(mid − d) + v(mid + d) = start + end
    for offset in (1, 37, 99):
        assert schedule(200 - offset) + schedule(200 + offset) == pytest.approx(2.0, abs=1e-12)


def test_piecewise_step_and_linear_interpolation():
    points = [(5, 1.0), (10, 2.0), (20, 5.0)]
    stepwise = Schedule.piecewise(points)
    assert [stepwise(s) for s in (0, 5, 9, 10, 19, 20, 100)] == [1.0, 1.0, 1.0, 2.0, 2.0, 5.0, 5.0]
    linear = Schedule.piecewise(points, interpolation="linear")
    assert [linear(s) for s in (0, 5, 7, 10, 15, 20, 25)] == pytest.approx([1.0, 1.0, 1.4, 2.0, 3.5, 5.0, 5.0])
    assert Schedule.piecewise([(3, 7.0)])(0) == 7.0


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda: Schedule.constant(float("nan")), ["Schedule.constant value", "nan"]),
        (lambda: Schedule.constant("1"), ["Schedule.constant value", "'1'"]),
        (lambda: Schedule.linear(0.0, float("inf"), 0, 10), ["end_value", "inf"]),
        (lambda: Schedule.linear(0.0, 1.0, 10, 10), ["end_step must be greater", "start_step=10", "end_step=10"]),
        (lambda: Schedule.cosine(0.0, 1.0, 10, 5), ["Schedule.cosine", "start_step=10", "end_step=5"]),
        (lambda: Schedule.linear(0.0, 1.0, -1, 5), ["start_step", "-1"]),
        (lambda: Schedule.piecewise([(0, 1.0), (10, 2.0), (5, 3.0)]), ["point 2", "step 5", "step 10"]),
        (lambda: Schedule.piecewise([(0, 1.0), (10, 2.0), (10, 3.0)]), ["no duplicates", "point 2", "step 10"]),
        (lambda: Schedule.piecewise([]), ["non-empty"]),
        (lambda: Schedule.piecewise([(0, 1.0), (4, float("nan"))]), ["point 1 value", "nan"]),
        (lambda: Schedule.piecewise([(0, 1.0, 2.0)]), ["point 0", "(step, value) pair"]),
        (lambda: Schedule.piecewise([(0, 1.0)], interpolation="cubic"), ["interpolation", "'cubic'"]),
    ],
)
def test_scalar_schedule_validation_names_the_culprit(make, fragments):
    with pytest.raises(ValueError) as error:
        make()
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize("step", [-1, 2.5, True, "3"])
def test_scalar_schedule_rejects_bad_steps(step):
    with pytest.raises(ValueError, match="linear schedule step must be an integer step >= 0"):
        Schedule.linear(0.0, 1.0, 0, 10)(step)


@pytest.mark.parametrize(
    "schedule",
    [
        Schedule.constant(2.5),
        Schedule.linear(1.0, 0.0, 10, 20),
        Schedule.cosine(0.0, 2.0, 3, 40),
        Schedule.piecewise([(0, 1.0), (10, 2.0)], interpolation="linear"),
    ],
)
def test_scalar_schedule_pickles_and_repr_rebuilds_it(schedule):
    copy = pickle.loads(pickle.dumps(schedule))
    assert copy == schedule
    assert [copy(step) for step in range(50)] == [schedule(step) for step in range(50)]
    rebuilt = eval(repr(schedule), {"Schedule": Schedule})
    assert [rebuilt(step) for step in range(50)] == [schedule(step) for step in range(50)]


def test_linear_and_cosine_with_same_arguments_differ():
    assert Schedule.linear(0.0, 1.0, 0, 10) != Schedule.cosine(0.0, 1.0, 0, 10)
    assert Schedule.cosine(0.0, 1.0, 0, 10)(2) == pytest.approx((1 - math.cos(0.2 * math.pi)) / 2, abs=1e-15)


# ---------------------------------------------------------------- reward schedules


def curriculum() -> RewardSchedule:
    """fmt-only, then a linear ramp to accuracy over 50 steps, then a cosine fade of fmt over 20 steps."""
    return RewardSchedule(
        [
            Stage(0, {"fmt": 1.0, "acc": 0.0}),
            Stage(100, {"acc": 1.0, "fmt": 0.5}, blend="linear", transition=50, name="ramp"),
            Stage(200, {"fmt": 0.0}, blend="cosine", transition=20, name="final"),
        ]
    )


def test_weights_at_stage_boundaries_and_mid_transition():
    schedule = curriculum()
    cosine_quarter = (1 - math.cos(math.pi / 4)) / 2  # 0.1464466094067262
    expected = {
        0: {"fmt": 1.0, "acc": 0.0},
        99: {"fmt": 1.0, "acc": 0.0},
        100: {"fmt": 1.0, "acc": 0.0},  # previous weights exactly at the start
        110: {"fmt": 0.9, "acc": 0.2},  # linear m = 0.2
        125: {"fmt": 0.75, "acc": 0.5},
        150: {"fmt": 0.5, "acc": 1.0},  # own weights at start + transition
        199: {"fmt": 0.5, "acc": 1.0},
        200: {"fmt": 0.5, "acc": 1.0},
        205: {"fmt": 0.5 * (1 - cosine_quarter), "acc": 1.0},  # 0.4267766952966369
        210: {"fmt": 0.25, "acc": 1.0},  # cosine midpoint = average
        220: {"fmt": 0.0, "acc": 1.0},  # "acc" inherited from the ramp stage
        10_000: {"fmt": 0.0, "acc": 1.0},
    }
    for step, weights in expected.items():
        got = schedule.weights_at(step)
        assert got.keys() == weights.keys()
        for key in weights:
            assert got[key] == pytest.approx(weights[key], abs=1e-15), (step, key)
    assert schedule.weights_at(205)["fmt"] == pytest.approx(0.4267766952966369, abs=1e-15)
    assert schedule.weights_at(100) == {"fmt": 1.0, "acc": 0.0}
    assert schedule.weights_at(150) == {"fmt": 0.5, "acc": 1.0}


def test_stage_at_and_mix_at_during_transitions():
    schedule = curriculum()
    assert [schedule.stage_at(s) for s in (0, 99, 100, 149, 150, 200, 219, 220)] == [
        "stage0", "stage0", "ramp", "ramp", "ramp", "final", "final", "final"
    ]
    assert schedule.mix_at(99) == 1.0
    assert schedule.mix_at(100) == 0.0
    assert schedule.mix_at(110) == pytest.approx(0.2, abs=1e-15)
    assert schedule.mix_at(149) == pytest.approx(0.98, abs=1e-15)
    assert schedule.mix_at(150) == 1.0
    assert schedule.mix_at(205) == pytest.approx((1 - math.cos(math.pi / 4)) / 2, abs=1e-15)
    assert schedule.mix_at(210) == pytest.approx(0.5, abs=1e-15)
    assert schedule.mix_at(220) == 1.0


def test_step_blend_switches_immediately():
    schedule = RewardSchedule([Stage(0, {"a": 1.0}), Stage(10, {"a": 3.0}, name="late")])
    assert schedule.weights_at(9) == {"a": 1.0}
    assert schedule.weights_at(10) == {"a": 3.0}
    assert (schedule.stage_at(10), schedule.mix_at(10)) == ("late", 1.0)


def test_transition_may_end_exactly_at_the_next_start():
    schedule = RewardSchedule(
        [Stage(0, {"a": 0.0}), Stage(10, {"a": 1.0}, "linear", 10), Stage(20, {"a": 5.0}, "linear", 4)]
    )
    assert [schedule.weights_at(s)["a"] for s in (19, 20, 21, 24)] == pytest.approx([0.9, 1.0, 2.0, 5.0])


def test_fractional_starts_resolve_with_max_steps():
    schedule = RewardSchedule(
        [Stage(0.0, {"a": 1.0, "b": 0.0}), Stage(0.25, {"a": 0.0, "b": 1.0}, blend="linear", transition=10, name="b")]
    )
    assert schedule.has_fractional_starts
    assert schedule.weights_at(49, max_steps=200) == {"a": 1.0, "b": 0.0}
    assert schedule.weights_at(50, max_steps=200) == {"a": 1.0, "b": 0.0}
    assert schedule.weights_at(55, max_steps=200) == pytest.approx({"a": 0.5, "b": 0.5})
    assert schedule.stage_at(50, max_steps=200) == "b"
    assert schedule.stage_at(49, max_steps=200) == "stage0"
    resolved = schedule.resolve(200)
    assert [stage.start for stage in resolved.stages] == [0, 50]
    assert not resolved.has_fractional_starts
    assert resolved.weights_at(55) == schedule.weights_at(55, max_steps=200)
    # 0.25 · 10 = 2.5 rounds half up to 3
    assert [stage.start for stage in schedule.resolve(10).stages] == [0, 3]


def test_fractional_start_rounds_to_the_nearest_step():
    # 0.29 · 100 = 28.999999999999996 in floating point: still step 29
    schedule = RewardSchedule([Stage(0, {"a": 1.0}), Stage(0.29, {"a": 2.0})])
    assert schedule.resolve(100).stages[1].start == 29


def test_fractional_start_without_max_steps_is_a_clear_error():
    schedule = RewardSchedule([Stage(0, {"a": 1.0}), Stage(0.5, {"a": 2.0}, name="half")])
    for method in (schedule.weights_at, schedule.stage_at, schedule.mix_at):
        with pytest.raises(ValueError, match=r"needs max_steps.*stage 1 \('half'\) starts at fraction 0.5"):
            method(3)


def test_max_steps_is_ignored_by_integer_schedules_but_validated():
    schedule = curriculum()
    assert schedule.weights_at(110, max_steps=1000) == schedule.weights_at(110)
    with pytest.raises(ValueError, match="max_steps must be positive, got 0"):
        schedule.weights_at(3, max_steps=0)
    with pytest.raises(ValueError, match="max_steps must be an integer step >= 0, got -5"):
        schedule.resolve(-5)


@pytest.mark.parametrize("step", [-1, 1.5, None])
def test_reward_schedule_rejects_bad_steps(step):
    with pytest.raises(ValueError, match="RewardSchedule step must be an integer step >= 0"):
        curriculum().weights_at(step)


def test_reward_schedule_is_pure_and_picklable():
    schedule = curriculum()
    steps = list(range(0, 260))
    sequential = [schedule.weights_at(s) for s in steps]
    shuffled = steps[:]
    random.Random(0).shuffle(shuffled)
    resumed = pickle.loads(pickle.dumps(schedule))  # e.g. restored from a checkpoint
    by_step = {s: resumed.weights_at(s) for s in shuffled}
    assert [by_step[s] for s in steps] == sequential
    assert [resumed.stage_at(s) for s in steps] == [schedule.stage_at(s) for s in steps]


def test_reward_names_and_validate_reward_names():
    schedule = curriculum()
    assert schedule.reward_names == {"fmt", "acc"}
    schedule.validate_reward_names(["acc", "fmt", "length"])
    with pytest.raises(ValueError) as error:
        schedule.validate_reward_names(["fmt", "accuracy_reward"])
    message = str(error.value)
    assert "'acc'" in message and "match no reward function" in message
    assert "Reward functions: 'fmt', 'accuracy_reward'" in message
    assert "'fmt'," not in message.split("Reward functions")[0]


def test_stage_names_default_and_repr():
    schedule = RewardSchedule([Stage(0, {"a": 1.0}), Stage(5, {"a": 2.0}, name="x"), Stage(9, {"a": 0.0})])
    assert [stage.name for stage in schedule.stages] == ["stage0", "x", "stage2"]
    assert "name='x'" in repr(schedule) and repr(schedule).startswith("RewardSchedule([Stage(start=0")


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "stages, fragments",
    [
        ([], ["non-empty"]),
        ([Stage(5, {"a": 1.0})], ["stage 0 ('stage0')", "must start at 0", "got 5"]),
        ([Stage(0.1, {"a": 1.0}, name="warm")], ["stage 0 ('warm')", "must start at 0", "0.1"]),
        (
            [Stage(0, {"a": 1.0}), Stage(100, {"a": 2.0}), Stage(50, {"a": 3.0}, name="back")],
            ["stage 2 ('back')", "strictly increasing", "start 50", "start 100"],
        ),
        (
            [Stage(0, {"a": 1.0}), Stage(100, {"a": 2.0}), Stage(100, {"a": 3.0})],
            ["stage 2 ('stage2')", "strictly increasing", "start 100"],
        ),
        (
            [Stage(0, {"a": 1.0}), Stage(0.5, {"a": 2.0}), Stage(0.3, {"a": 3.0})],
            ["stage 2 ('stage2')", "strictly increasing", "0.3", "0.5"],
        ),
        (
            [Stage(0, {"a": 1.0}), Stage(100, {"a": 2.0}, "linear", 60, name="ramp"), Stage(150, {"a": 3.0})],
            ["stage 1 ('ramp')", "transition of 60 steps", "overlaps stage 2 ('stage2') starting at 150"],
        ),
        (
            [Stage(0, {"a": 1.0}), Stage(10, {"a": 2.0}, "linear", 11), Stage(20, {"a": 3.0})],
            ["stage 1 ('stage1')", "transition of 11 steps from start 10", "overlaps stage 2 ('stage2')", "at 20"],
        ),
        ([Stage(0, {"a": 1.0}), Stage(10, {"a": 2.0}, "linear", -5)], ["stage 1 ('stage1')", "transition", "-5"]),
        ([Stage(0, {"a": 1.0}), Stage(10, {"a": 2.0}, "linear", 2.5)], ["stage 1 ('stage1')", "transition", "2.5"]),
        ([Stage(0, {"a": 1.0}), Stage(10, {"a": NAN}, name="n")], ["stage 1 ('n')", "weight 'a'", "nan"]),
        ([Stage(0, {"a": INF})], ["stage 0 ('stage0')", "weight 'a'", "inf"]),
        ([Stage(0, {"a": "1.0"})], ["stage 0 ('stage0')", "weight 'a'", "'1.0'", "str"]),
        ([Stage(0, {"a": None})], ["stage 0 ('stage0')", "weight 'a'", "None"]),
        ([Stage(0, {"a": 1.0}), Stage(10, {"a": 2.0}, blend="exp")], ["stage 1 ('stage1')", "blend", "'exp'"]),
        ([Stage(0, {"a": 1.0}), Stage(1.0, {"a": 2.0})], ["stage 1 ('stage1')", "fractional start", "[0, 1)", "1.0"]),
        ([Stage(0, {"a": 1.0}), Stage(-0.2, {"a": 2.0})], ["stage 1 ('stage1')", "fractional start", "-0.2"]),
        ([Stage(0, {"a": 1.0}), Stage(-3, {"a": 2.0})], ["stage 1 ('stage1')", "start", "-3"]),
        (
            [Stage(0, {"a": 1.0}), Stage(10, {"a": 2.0}, blend="step", transition=5)],
            ["stage 1 ('stage1')", "transition must be 0", "got 5"],
        ),
        ([Stage(0, {"a": 1.0}, blend="linear", transition=3)], ["stage 0 ('stage0')", "first stage", "3"]),
        ([Stage(0, {})], ["stage 0 ('stage0')", "at least one reward"]),
        (
            [Stage(0, {"a": 1.0}), Stage(10, {"b": 2.0}, name="newkey")],
            ["stage 1 ('newkey')", "'b'", "missing from the first stage"],
        ),
        (
            [Stage(0, {"a": 1.0}, name="s"), Stage(10, {"a": 2.0}, name="s")],
            ["stage 1 ('s')", "already used by stage 0"],
        ),
        ([Stage(0, {"a": 1.0}), {"start": 10}], ["stage 1 must be a Stage", "dict"]),
    ],
)
def test_reward_schedule_validation_names_the_stage_and_value(stages, fragments):
    with pytest.raises(ValueError) as error:
        RewardSchedule(stages)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_resolved_fractional_start_out_of_order_is_caught_at_resolve():
    schedule = RewardSchedule([Stage(0, {"a": 1.0}), Stage(0.5, {"a": 2.0}, name="half"), Stage(100, {"a": 3.0})])
    assert schedule.resolve(100).stages[1].start == 50
    with pytest.raises(ValueError) as error:
        schedule.resolve(300)
    message = str(error.value)
    assert "stage 2 ('stage2')" in message and "start 100" in message and "start 150" in message
    assert "max_steps=300" in message
    with pytest.raises(ValueError, match="stage 2 .*max_steps=300"):
        schedule.weights_at(0, max_steps=300)


def test_resolved_fractional_transition_overlap_is_caught_at_resolve():
    schedule = RewardSchedule([Stage(0, {"a": 1.0}), Stage(0.5, {"a": 2.0}, "cosine", 30, name="c"), Stage(70, {})])
    schedule.resolve(80)  # 40 + 30 <= 70
    with pytest.raises(ValueError, match=r"stage 1 \('c'\): its transition of 30 steps from start 50 overlaps"):
        schedule.resolve(100)


@st.composite
def valid_schedules(draw):
    """Random valid integer-start schedules over the keys a, b, c."""
    keys = ["a", "b", "c"]
    weight = st.floats(-5.0, 5.0, allow_nan=False)
    stages = [Stage(0, {key: draw(weight) for key in keys})]
    start = 0
    for _ in range(draw(st.integers(0, 3))):
        start += draw(st.integers(1, 25))
        stages.append(
            Stage(
                start,
                {key: draw(weight) for key in draw(st.sets(st.sampled_from(keys)))},
                blend=draw(st.sampled_from(["step", "linear", "cosine"])),
            )
        )
    for index in range(1, len(stages)):
        if stages[index].blend != "step":
            room = stages[index + 1].start - stages[index].start if index + 1 < len(stages) else 30
            stage = stages[index]
            stages[index] = Stage(stage.start, stage.weights, stage.blend, draw(st.integers(0, room)))
    return RewardSchedule(stages)


@settings(max_examples=150, deadline=None)
@given(valid_schedules())
def test_weights_change_no_faster_than_the_blend_slope(schedule):
    stages = schedule.stages
    last = stages[-1].start + stages[-1].transition + 3
    weights = [schedule.weights_at(step) for step in range(last + 1)]
    full = [dict(stages[0].weights)]  # each stage's own weights, missing keys inherited
    for stage in stages[1:]:
        full.append({**full[-1], **stage.weights})
    for step in range(last):
        # the transition containing [step, step + 1], if any
        owner = next(
            (i for i, stage in enumerate(stages) if stage.start <= step and step + 1 <= stage.start + stage.transition),
            None,
        )
        if any(stage.start == step + 1 and stage.transition == 0 for stage in stages[1:]):
            continue  # an immediate switch may jump
        for key in weights[step]:
            change = abs(weights[step + 1][key] - weights[step][key])
            if owner is None:
                assert change == 0.0, (step, key)
            else:
                stage = stages[owner]
                jump = abs(full[owner][key] - full[owner - 1][key])
                slope = jump / stage.transition * (math.pi / 2 if stage.blend == "cosine" else 1.0)
                assert change <= slope + 1e-12, (step, key)


# ---------------------------------------------------------------- blend


class CountingReward:
    """A picklable reward returning fixed scores and recording its calls."""

    def __init__(self, name, scores):
        self.__name__ = name
        self.scores = scores
        self.calls = []

    def __call__(self, prompts, completions, completion_ids=None, **kwargs):
        self.calls.append(dict(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs))
        return list(self.scores)


PROMPTS, COMPLETIONS = ["p0", "p0", "p1"], ["c0", "c1", "c2"]


def make_blend(scores_a=(1.0, 2.0, -1.0), scores_b=(3.0, 0.0, 1.0), schedule=None, name=None):
    reward_a, reward_b = CountingReward("fmt_reward", scores_a), CountingReward("acc_reward", scores_b)
    schedule = Schedule.linear(0.0, 1.0, 0, 10) if schedule is None else schedule
    return blend(reward_a, reward_b, schedule, name=name), reward_a, reward_b


def test_blend_value_is_the_mix_at_several_steps():
    blended, _, _ = make_blend()
    assert math.isnan(blended.last_mix)
    for step, mix in [(2, 0.2), (5, 0.5), (7, 0.7)]:
        got = blended(prompts=PROMPTS, completions=COMPLETIONS, step=step)
        expected = [(1 - mix) * a + mix * b for a, b in zip((1.0, 2.0, -1.0), (3.0, 0.0, 1.0))]
        assert got == pytest.approx(expected, abs=1e-15)
        assert blended.last_mix == pytest.approx(mix, abs=1e-15)
    assert blended(prompts=PROMPTS, completions=COMPLETIONS, step=5) == pytest.approx([2.0, 1.0, 0.0])


def test_blend_falls_back_to_trainer_state_global_step():
    blended, _, _ = make_blend()
    state = SimpleNamespace(global_step=2)
    assert blended(prompts=PROMPTS, completions=COMPLETIONS, trainer_state=state) == pytest.approx([1.4, 1.6, -0.6])
    assert blended.last_mix == pytest.approx(0.2)
    # an explicit step wins over trainer_state
    blended(prompts=PROMPTS, completions=COMPLETIONS, step=5, trainer_state=state)
    assert blended.last_mix == pytest.approx(0.5)


def test_blend_without_a_step_is_a_clear_error():
    blended, _, _ = make_blend(name="mix")
    with pytest.raises(ValueError, match="Blended reward 'mix' needs the training step"):
        blended(prompts=PROMPTS, completions=COMPLETIONS)
    with pytest.raises(ValueError, match="needs the training step"):
        blended(prompts=PROMPTS, completions=COMPLETIONS, trainer_state=None)


def test_blend_passes_all_arguments_to_both_inner_rewards():
    blended, reward_a, reward_b = make_blend()
    arguments = dict(completion_ids=[[1], [2], [3]], step=4, answer=["x", "y", "z"])
    blended(prompts=PROMPTS, completions=COMPLETIONS, **arguments)
    expected = dict(prompts=PROMPTS, completions=COMPLETIONS, **arguments)
    assert reward_a.calls == [expected] and reward_b.calls == [expected]


@pytest.mark.parametrize("step, mix, called", [(0, 0.0, "a"), (10, 1.0, "b"), (25, 1.0, "b")])
def test_blend_short_circuits_at_mix_zero_and_one(step, mix, called):
    blended, reward_a, reward_b = make_blend()
    got = blended(prompts=PROMPTS, completions=COMPLETIONS, step=step)
    assert got == ([1.0, 2.0, -1.0] if called == "a" else [3.0, 0.0, 1.0])
    assert (len(reward_a.calls), len(reward_b.calls)) == ((1, 0) if called == "a" else (0, 1))
    assert blended.last_mix == mix


@pytest.mark.parametrize("raw, clamped", [(-0.5, 0.0), (1.7, 1.0)])
def test_blend_clamps_the_schedule_to_zero_one(raw, clamped):
    blended, reward_a, reward_b = make_blend(schedule=lambda step: raw)
    blended(prompts=PROMPTS, completions=COMPLETIONS, step=3)
    assert blended.last_mix == clamped
    assert len(reward_a.calls) + len(reward_b.calls) == 1


def test_blend_none_handling():
    scores_a, scores_b = (None, 2.0, 1.0), (3.0, None, 1.0)
    blended, _, _ = make_blend(scores_a, scores_b)
    assert blended(prompts=PROMPTS, completions=COMPLETIONS, step=5) == [None, None, 1.0]
    # weight 0 on the reward that cannot score: its None does not matter (it is not even called)
    assert blended(prompts=PROMPTS, completions=COMPLETIONS, step=0) == [None, 2.0, 1.0]
    assert blended(prompts=PROMPTS, completions=COMPLETIONS, step=10) == [3.0, None, 1.0]


def test_blend_length_errors_name_the_inner_function():
    blended, _, _ = make_blend(scores_b=(1.0, 2.0), name="mix")
    with pytest.raises(ValueError, match="'mix': inner reward 'acc_reward' returned 2 values for 3 completions"):
        blended(prompts=PROMPTS, completions=COMPLETIONS, step=5)
    blended, _, _ = make_blend(scores_a=(1.0, 2.0, 3.0, 4.0))
    with pytest.raises(ValueError, match="inner reward 'fmt_reward' returned 4 values for 3 completions"):
        blended(prompts=PROMPTS, completions=COMPLETIONS, step=0)


def test_blend_rejects_non_numeric_scores_and_bad_schedules():
    blended, _, _ = make_blend(scores_a=(1.0, "good", 3.0))
    with pytest.raises(TypeError, match="inner reward 'fmt_reward' returned 'good' for sample 1"):
        blended(prompts=PROMPTS, completions=COMPLETIONS, step=5)
    blended, _, _ = make_blend(schedule=lambda step: float("nan"), name="mix")
    with pytest.raises(ValueError, match=r"'mix': schedule\(3\) must be finite, got nan"):
        blended(prompts=PROMPTS, completions=COMPLETIONS, step=3)
    with pytest.raises(TypeError, match="blend schedule must be callable"):
        blend(CountingReward("a", ()), CountingReward("b", ()), 0.5)


def test_blend_name():
    assert make_blend()[0].__name__ == "blend_fmt_reward_acc_reward"
    assert make_blend(name="curriculum")[0].__name__ == "curriculum"
    unnamed = functools.partial(CountingReward("a", (1.0,)))
    with pytest.raises(TypeError, match="reward_a .* has no __name__; pass name="):
        blend(unnamed, CountingReward("b", (1.0,)), Schedule.constant(0.5))
    assert blend(unnamed, CountingReward("b", (1.0,)), Schedule.constant(0.5), name="ok").__name__ == "ok"


def test_blend_rejects_async_rewards():
    async def async_reward(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(TypeError, match="reward_b must be synchronous"):
        blend(CountingReward("a", ()), async_reward, Schedule.constant(0.5))


def test_blend_pickles():
    blended, _, _ = make_blend()
    copy = pickle.loads(pickle.dumps(blended))
    assert copy.__name__ == blended.__name__
    expected = blended(prompts=PROMPTS, completions=COMPLETIONS, step=5)
    assert copy(prompts=PROMPTS, completions=COMPLETIONS, step=5) == expected == pytest.approx([2.0, 1.0, 0.0])
