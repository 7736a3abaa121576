"""Every path that reads a reward value goes through the guard's classification (issue 21, part 3): routed
rewards, a reward model's scores and normalization, running moments, task metrics, the length correlation."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from grpo_custom.rewards.direction_check import reward_length_correlation
from grpo_custom.rewards.guard import BadRewardWarning, RewardFunctionError, guard_reward_function
from grpo_custom.rewards.reward_model import NORMALIZE_EPS, RewardModelReward
from grpo_custom.rewards.tasks import route_rewards, task_metrics
from grpo_custom.rewards.tasks.moments import RunningMoments
from tests.rewards.test_reward_model import build_tiny_classifier

TASKS = ["code", "math", "math", "code"]
PROMPTS = ["p0", "p1", "p2", "p3"]
COMPLETIONS = ["c0", "c1", "c2", "c3"]


def _routed(math_output):
    """The math reward routed to the math samples (indices 1 and 2), guarded as the trainer guards it."""
    def math_reward(prompts, completions, **kwargs):
        return math_output

    def code_reward(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    (routed_math, _), _ = route_rewards({"math": [math_reward], "code": [code_reward]}, "task")
    return routed_math


def test_a_routed_value_is_classified_at_its_index_in_the_full_batch():
    nan_guard = guard_reward_function(_routed([10**400, 0.5]), "math/math_reward", policy="nan")
    with pytest.warns(BadRewardWarning, match=r"1 reward\(s\) set to None \(non_finite=1\)"):
        assert nan_guard(prompts=PROMPTS, completions=COMPLETIONS, task=TASKS) == [None, None, 0.5, None]
    raise_guard = guard_reward_function(_routed([0.5, "2"]), "math/math_reward", policy="raise")
    with pytest.raises(RewardFunctionError, match=r"returned a non-number at sample index 2: str '2'"):
        raise_guard(prompts=PROMPTS, completions=COMPLETIONS, task=TASKS)


@pytest.mark.parametrize("output, described", [({"a": 1.0, "b": 2.0}, "dict {'a': 1.0, 'b': 2.0}"),
                                               ("ab", "str 'ab'")])
def test_a_routed_output_that_is_not_a_sequence_is_refused_not_reinterpreted(output, described):
    # list() would have read the dict's keys / the string's characters as two rewards
    with pytest.raises(ValueError, match=rf"math/math_reward: the reward function returned {described} for the 2 "
                                         r"samples routed to it; it must return a list"):
        _routed(output)(prompts=PROMPTS, completions=COMPLETIONS, task=TASKS)
    assert _routed((1.0, 2.0))(prompts=PROMPTS, completions=COMPLETIONS, task=TASKS) == [None, 1.0, 2.0, None]
    routed_tensor = _routed(torch.tensor([1.0, 2.0]))(prompts=PROMPTS, completions=COMPLETIONS, task=TASKS)
    assert [None if v is None else float(v) for v in routed_tensor] == [None, 1.0, 2.0, None]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return build_tiny_classifier(tmp_path_factory.mktemp("paths_reward_model"))


def _with_inf_at(reward: RewardModelReward, index: int, value: float) -> list[float]:
    """Make the model's raw score of sample ``index`` non-finite (an fp16 overflow, say); returns the true scores."""
    score_texts = reward.score_texts
    raw = []

    def overflowing(texts, completion_texts=None):
        scores = score_texts(texts, completion_texts)
        raw[:] = scores.tolist()
        scores[index] = value
        return scores

    reward.score_texts = overflowing
    return raw


@pytest.mark.parametrize("normalize", ["batch", "running"])
def test_a_non_finite_model_score_stays_out_of_the_normalization(classifier_dir, normalize):
    reward = RewardModelReward(classifier_dir, device="cpu", normalize=normalize)
    raw = _with_inf_at(reward, 2, math.inf)
    scores = reward(PROMPTS + ["p4"], COMPLETIONS + ["c4"])
    finite = [s for i, s in enumerate(raw) if i != 2]
    mean, std = statistics.mean(finite), statistics.stdev(finite)
    expected = [(s - mean) / (std + NORMALIZE_EPS) for s in finite]
    assert scores[2] == math.inf  # returned as it is, for the guard
    assert [s for i, s in enumerate(scores) if i != 2] == pytest.approx(expected, rel=1e-6)
    if normalize == "running":
        assert reward.moments.count == 4 and reward.moments.mean == pytest.approx(mean)
    guarded = guard_reward_function(reward, "rm", policy="nan")
    with pytest.warns(BadRewardWarning, match=r"'rm': 1 reward\(s\) set to None \(non_finite=1\)"):
        again = guarded(prompts=PROMPTS + ["p4"], completions=COMPLETIONS + ["c4"])
    assert again[2] is None and all(math.isfinite(v) for i, v in enumerate(again) if i != 2)


def test_a_nan_model_score_is_reported_by_the_guard_at_its_index(classifier_dir):
    reward = RewardModelReward(classifier_dir, device="cpu")
    _with_inf_at(reward, 1, math.nan)
    with pytest.raises(RewardFunctionError, match=r"'rm' returned a non-finite value at sample index 1: float nan"):
        guard_reward_function(reward, "rm")(prompts=PROMPTS, completions=COMPLETIONS)


def test_running_moments_leave_non_finite_values_out():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, math.inf, 2.0, math.nan, -math.inf, 3.0]))
    assert moments.count == 3 and moments.mean == 2.0 and moments.std == pytest.approx(1.0)


def test_task_metrics_read_rewards_through_the_classification():
    metrics = task_metrics(["a"] * 4 + ["b"] * 4, [1.0, None, 10**400, 3.0, 2.0, "x", math.inf, 2.0],
                           [0.0] * 8, 4, [1.0] * 8)
    assert metrics["tasks/a/reward_mean"] == 2.0 and metrics["tasks/a/reward_std"] == pytest.approx(math.sqrt(2))
    assert metrics["tasks/b/reward_mean"] == 2.0 and metrics["tasks/b/frac_reward_zero_std"] == 1.0
    from_tensor = task_metrics(["a"] * 4, torch.tensor([1.0, math.nan, math.inf, 3.0]), [0.0] * 4, 4, [1.0] * 4)
    assert from_tensor["tasks/a/reward_mean"] == 2.0


def test_length_correlation_leaves_bad_values_out():
    # good pairs (1, 10), (2, 20), (4, 40): correlation 1
    assert reward_length_correlation([1.0, 10**400, 2.0, "x", 4.0, math.inf], [10, 15, 20, 25, 40, 50]) == \
        pytest.approx(1.0)
