"""Tests of grpo_custom.rewards.direction_check: direction, constant, bad outputs, conversational prompts."""
import asyncio
import math
import re

import numpy as np
import pytest
import torch

from grpo_custom.rewards.builtin import THINK_ANSWER_PATTERN, completion_text, format_reward, length_reward
from grpo_custom.rewards.direction_check import (
    LENGTH_PROBES,
    SCALE_LENGTHS,
    check_reward,
    reward_length_correlation,
    spearman_correlation,
)


def text_reward(name, score):
    """A TRL reward function scoring each completion text with ``score(text)``."""

    def reward(prompts, completions, **kwargs):
        return [score(completion_text(c)) for c in completions]

    reward.__name__ = name
    return reward


def test_distance_reward_is_flagged_with_the_fix():
    report = check_reward(text_reward("distance", lambda c: abs(20 - len(c))), target=20)
    assert not report.ok
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert "far from the target length 20" in problem
    assert "GRPO maximizes reward: use -|d|, 1/(1+|d|) or exp(-k|d|)" in problem
    assert report.distance_correlation == pytest.approx(1.0)
    assert report.rewards["near"] == 0.0 and report.rewards["empty"] == 20.0
    assert "PROBLEM" in str(report) and "distance" in str(report)


@pytest.mark.parametrize(
    "score",
    [
        lambda c: -abs(20 - len(c)),
        lambda c: 1 / (1 + abs(20 - len(c))),
        lambda c: math.exp(-0.1 * abs(20 - len(c))),
    ],
    ids=["neg_abs", "reciprocal", "exp"],
)
def test_well_signed_length_rewards_pass(score):
    report = check_reward(text_reward("good", score))  # target defaults to 20 chars
    assert report.ok, str(report)
    assert report.target == 20
    assert report.distance_correlation == pytest.approx(-1.0)
    assert report.rewards["near"] == max(report.rewards[p] for p in LENGTH_PROBES)


def test_probe_lengths_follow_the_target():
    report = check_reward(text_reward("good", lambda c: -abs(30 - len(c))), target=30)
    assert [report.lengths[p] for p in LENGTH_PROBES] == [0, 3, 15, 30, 60, 300]
    assert report.rewards["far_long"] == -30.0


def test_constant_on_probes_is_a_note_not_a_problem():
    """Probes miss formats: the same value on every probe is no evidence, only a note (the trainer judges it on
    real completions, tests/rewards/test_reward_health.py)."""
    report = check_reward(text_reward("constant", lambda c: 0.5))
    assert report.ok and report.problems == []
    assert report.notes == ["'constant' returned 0.5 for every probe (the probes may miss its format; whether it "
                            "varies is judged on the model's completions during training)."]
    assert "NOTE: 'constant' returned 0.5" in str(report)
    assert math.isnan(report.distance_correlation)


def test_nan_and_non_number_values_are_flagged():
    report = check_reward(text_reward("nan_when_empty", lambda c: math.nan if c == "" else -abs(20 - len(c))))
    assert not report.ok
    assert any("NaN/inf" in p and "empty=nan" in p for p in report.problems)
    assert math.isnan(report.rewards["empty"])
    report = check_reward(text_reward("stringly", lambda c: str(len(c))))
    assert any("non-numbers" in p for p in report.problems)


def test_wrong_length_and_raising_are_flagged():
    def short(prompts, completions, **kwargs):
        return [0.0] * (len(completions) - 1)

    report = check_reward(short, n_samples=2)
    assert not report.ok and report.rewards == {}
    probes = len(LENGTH_PROBES) + 4 + len(SCALE_LENGTHS)  # length, other and scale probes, 2 samples each
    assert report.problems == [f"'short' returned {2 * probes - 1} values for {2 * probes} completions; return a list "
                               "with one value per completion."]

    def needs_column(prompts, completions, **kwargs):
        return [float(s) for s in kwargs["solution"]]

    report = check_reward(needs_column)
    assert not report.ok and "raised KeyError" in report.problems[0]


def test_format_reward_is_not_flagged_for_direction():
    report = check_reward(format_reward(THINK_ANSWER_PATTERN))
    assert report.ok, str(report)
    assert report.rewards["think_answer"] == 1.0 and report.rewards["near"] == 0.0
    alphabetic = check_reward(text_reward("alphabetic", lambda c: 1.0 if re.fullmatch(r"[a-z ]*", c) else 0.0))
    assert alphabetic.ok, str(alphabetic)


def test_conversational_prompts_get_message_completions_and_columns():
    seen = {}

    def reward(prompts, completions, completion_ids=None, **kwargs):
        seen.update(prompts=prompts, completions=completions, kwargs=kwargs)
        return [-abs(20 - len(c[0]["content"])) for c in completions]

    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]
    report = check_reward(reward, prompts, columns={"solution": ["1", "2"]}, n_samples=2)
    assert report.ok, str(report)
    assert seen["completions"][0] == [{"role": "assistant", "content": ""}]
    assert seen["prompts"][:2] == prompts
    assert seen["kwargs"]["solution"][:4] == ["1", "2", "1", "2"]
    assert {"step", "progress", "stage", "trainer_state", "log_extra", "log_metric"} <= set(seen["kwargs"])


def test_token_unit_uses_completion_ids():
    report = check_reward(length_reward(12, unit="tokens"), target=12, unit="tokens")
    assert report.ok, str(report)
    assert report.lengths["near"] == 12 and report.rewards["near"] == 0.0
    assert report.rewards["far_long"] == -12.0


def test_async_reward_is_awaited():
    async def reward(prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [abs(20 - len(c)) for c in completions]

    report = check_reward(reward)
    assert not report.ok and "far from the target length" in report.problems[0]


def test_bad_options():
    with pytest.raises(ValueError, match="target"):
        check_reward(text_reward("r", len), target=2)
    with pytest.raises(ValueError, match="unit"):
        check_reward(text_reward("r", len), unit="words")
    with pytest.raises(ValueError, match="column 'solution' has 1 values for 2 prompts"):
        check_reward(text_reward("r", len), ["a", "b"], columns={"solution": ["1"]})


def test_spearman_with_ties_by_hand():
    # ranks of x: [1.5, 1.5, 3], of y: [1, 2, 3]; pearson = 0.8660254...
    assert spearman_correlation([0, 0, 5], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman_correlation([1, 2, 3], [4, 4, 4]))


def test_reward_length_correlation_is_pearson_and_nan_safe():
    rewards = [1.0, None, 2.0, math.nan, 4.0]
    lengths = [10, 20, 20, 30, 40]
    # finite pairs: (1, 10), (2, 20), (4, 40): r = corr([1, 2, 4], [10, 20, 40]) = 1
    assert reward_length_correlation(rewards, lengths) == pytest.approx(1.0)
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 4.0, 3.0])
    expected = np.corrcoef(x, y)[0, 1]
    assert reward_length_correlation(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected)
    assert math.isnan(reward_length_correlation([1.0, None], [3, 4]))
    with pytest.raises(ValueError, match="3 and 2"):
        reward_length_correlation([1, 2, 3], [1, 2])


def test_a_reward_comparing_against_a_column_is_not_called_constant():
    """The probes include one per column stating the row's value, so an answer-checking reward can score 1."""
    from grpo_custom.rewards import math_answer_reward

    reward = math_answer_reward(solution_column="solution")
    report = check_reward(reward, prompts=["What is 6*7?"], columns={"solution": ["42"]})
    assert report.ok, report.problems
    assert report.rewards["column:solution"] == 1.0
    assert max(v for k, v in report.rewards.items() if k != "column:solution") == 0.0
    assert report.direction == "declared"  # a built-in reward declares higher_is_better


def test_reward_health_metrics_match_per_function_reference():
    """Vectorized health metrics equal a per-function computation (NaN = unscored)."""
    import math

    import torch

    from grpo_custom.rewards.direction_check import reward_health_metrics, reward_length_correlation

    nan = math.nan
    rewards = torch.tensor([[1.0, nan], [2.0, nan], [3.0, 5.0], [3.0, 5.0], [nan, 1.0], [nan, 4.0]])
    lengths = torch.tensor([3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    nan_rate, frac_zero_std, correlation = reward_health_metrics(rewards, lengths, num_generations=2).tolist()
    assert nan_rate == pytest.approx([2 / 6, 2 / 6])
    # function 0 scored groups 0 and 1 (std > 0 and std 0) → 1/2; function 1 scored groups 1 and 2 → 1/2
    assert frac_zero_std == pytest.approx([0.5, 0.5])
    for column in range(2):
        expected = reward_length_correlation(rewards[:, column].tolist(), lengths.tolist())
        assert correlation[column] == pytest.approx(expected)
    constant = reward_health_metrics(torch.ones(4, 1), lengths[:4], num_generations=2)
    assert math.isnan(constant[2, 0]) and constant[1, 0] == 1.0


@pytest.mark.parametrize("target", [2, 20, 200, 3000])
def test_direction_is_found_without_knowing_the_target(target):
    """A distance to any target in 2..3000 chars is flagged with no target given; its negation is "ok"."""
    wrong = check_reward(text_reward("distance", lambda c: abs(target - len(c))))
    assert not wrong.ok and wrong.direction == "wrong", str(wrong)
    assert any("prefers completions far from the target length" in p for p in wrong.problems)
    right = check_reward(text_reward("closeness", lambda c: -abs(target - len(c))))
    assert right.ok and right.direction == "ok", str(right)


@pytest.mark.parametrize("name, score", [
    ("longer_is_better", lambda c: float(len(c))),  # a monotone preference: no target to be far from
    ("shorter_is_better", lambda c: -float(len(c))),
    ("letters", lambda c: sum(ch.isalpha() for ch in c) / max(1, len(c))),
    ("alphabetic", lambda c: 1.0 if re.fullmatch(r"[a-z ]*", c) else 0.0),
    ("beyond_the_probes", lambda c: abs(100_000 - len(c))),
])
def test_direction_that_cannot_be_established_is_unchecked_never_ok(name, score):
    report = check_reward(text_reward(name, score))
    assert report.direction == "unchecked", str(report)
    assert "direction unchecked" in str(report)


def test_built_in_rewards_declare_their_direction():
    from grpo_custom.rewards import code_execution_reward

    for reward in (length_reward(8), format_reward(THINK_ANSWER_PATTERN), code_execution_reward()):
        assert reward.higher_is_better is True
    report = check_reward(length_reward(200))
    assert report.ok and report.direction == "declared"
    assert not any(probe.startswith("scale_") for probe in report.rewards)  # a declared reward is not probed for it


def test_explicit_target_keeps_the_target_probes():
    report = check_reward(text_reward("distance", lambda c: abs(200 - len(c))), target=200)
    assert report.direction == "wrong" and "far from the target length 200 chars" in report.problems[0]
    assert not any(probe.startswith("scale_") for probe in report.rewards)
    assert check_reward(text_reward("good", lambda c: -abs(200 - len(c))), target=200).direction == "ok"


def test_a_reward_scoring_one_probe_is_not_called_constant():
    """A reward that can only score the probe stating its row's column (None elsewhere) is not 'constant'."""
    def reads_column(prompts, completions, solution, **kwargs):
        return [1.0 if s in c else None for c, s in zip(completions, solution)]

    report = check_reward(reads_column, prompts=["2+2="], columns={"solution": ["4"], "tests": ["assert True"]})
    assert report.ok, report.problems
    assert report.rewards["column:solution"] == 1.0 and report.direction == "unchecked"
