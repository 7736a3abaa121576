"""The interval math of grpo_custom.experiments against references computed independently: printed t tables,
closed forms of the t distribution for 1 and 2 degrees of freedom, and intervals worked out by hand."""
from __future__ import annotations

import math

import pytest

from grpo_custom.experiments.curves import curves_from_log_history, run_value
from grpo_custom.experiments.stats import (
    difference_interval,
    mean_interval,
    regularized_incomplete_beta,
    student_t_cdf,
    student_t_quantile,
)

# Two-sided 95% critical values t_{0.975, df}, as printed (3 decimals) in standard t tables.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
T_95 = {1: 6.314, 5: 2.015, 10: 1.812, 30: 1.697}  # one-sided 95%


@pytest.mark.parametrize("df", sorted(T_975))
def test_two_sided_95_quantiles_match_the_printed_table(df):
    assert student_t_quantile(0.975, df) == pytest.approx(T_975[df], abs=6e-4)
    assert student_t_quantile(0.025, df) == pytest.approx(-T_975[df], abs=6e-4)


def test_one_sided_95_quantiles_and_the_normal_limit():
    for df, value in T_95.items():
        assert student_t_quantile(0.95, df) == pytest.approx(value, abs=6e-4)
    assert student_t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)  # the normal's 97.5% point


def test_cdf_matches_the_closed_forms_for_one_and_two_degrees_of_freedom():
    for t in (-30.0, -2.5, -0.3, 0.0, 0.7, 1.0, 4.0, 100.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert student_t_quantile(0.9, 1) == pytest.approx(math.tan(math.pi * 0.4), rel=1e-10)


def test_incomplete_beta_matches_its_closed_forms_and_rejects_bad_input():
    for x in (0.0, 0.05, 0.3, 0.5, 0.9, 0.999, 1.0):
        assert regularized_incomplete_beta(1.0, 3.5, x) == pytest.approx(1 - (1 - x) ** 3.5, abs=1e-13)
        assert regularized_incomplete_beta(2.5, 1.0, x) == pytest.approx(x ** 2.5, abs=1e-13)
    with pytest.raises(ValueError, match="a > 0"):
        regularized_incomplete_beta(0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        regularized_incomplete_beta(1.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="probability"):
        student_t_quantile(1.0, 3)


def test_mean_interval_by_hand():
    values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]  # mean 5, sum of squares 32, s = sqrt(32 / 7)
    interval = mean_interval(values)
    half = 2.3646 * math.sqrt(32 / 7) / math.sqrt(8)  # t_{0.975, 7} = 2.3646 (4-decimal table)
    assert interval.mean == 5.0 and interval.n == 8 and interval.df == 7
    assert interval.std == pytest.approx(math.sqrt(32 / 7))
    assert interval.low == pytest.approx(5 - half, abs=1e-3) and interval.high == pytest.approx(5 + half, abs=1e-3)
    assert interval.as_dict()["ci95"] == [interval.low, interval.high]


def test_one_seed_has_a_mean_but_no_interval():
    interval = mean_interval([0.25])
    assert interval.mean == 0.25 and interval.low is None and interval.high is None
    assert interval.as_dict()["ci95"] is None and "one seed" in interval.note
    difference, pairing = difference_interval({"0": 1.0}, {"0": 0.5})
    assert pairing == "paired by seed" and difference.mean == 0.5 and difference.low is None


def test_difference_is_paired_by_seed_when_the_seeds_match():
    values, baseline = {"0": 1.0, "1": 3.0, "2": 2.5}, {"0": 0.5, "1": 2.0, "2": 2.5}
    interval, pairing = difference_interval(values, baseline)
    differences = [0.5, 1.0, 0.0]  # per seed
    mean = sum(differences) / 3
    s = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    assert pairing == "paired by seed" and interval.df == 2
    assert interval.mean == pytest.approx(mean)
    assert interval.high - interval.mean == pytest.approx(4.3027 * s / math.sqrt(3), abs=1e-4)  # t_{0.975, 2}


def test_difference_is_welch_when_the_seeds_differ():
    # equal sizes and variances: the Welch-Satterthwaite df is exactly 2(n - 1) = 4
    interval, pairing = difference_interval({"0": 1.0, "1": 2.0, "2": 3.0}, {"3": 2.0, "4": 3.0, "5": 4.0})
    assert pairing == "unpaired (Welch)"
    assert interval.df == pytest.approx(4.0) and interval.mean == pytest.approx(-1.0)
    se = math.sqrt(1 / 3 + 1 / 3)
    assert (interval.low, interval.high) == pytest.approx((-1 - 2.7764 * se, -1 + 2.7764 * se), abs=1e-4)


def test_run_value_is_the_mean_of_the_last_quarter_of_logged_values():
    assert run_value([1, 2, 3, 4, 5, 6, 7, 8]) == 7.5
    assert run_value([1, None, 3]) == 3  # ceil(0.25 * 2) = 1 value
    assert run_value([None]) is None
    assert run_value([1, 2, 3, 4], 1.0) == 2.5


def test_curves_have_one_value_per_logging_step_of_their_kind():
    history = [{"loss": 1.0, "reward": 0.5, "epoch": 0.1, "step": 1},
               {"loss": 2.0, "step": 2, "grad_norm": float("nan")},
               {"eval_reward": 0.25, "eval_runtime": 0.3, "step": 2},
               {"train_runtime": 3.0, "train_loss": 1.5, "step": 2}]
    curves, steps, summary = curves_from_log_history(history)
    assert steps == {"train": [1, 2], "eval": [2]}
    assert curves == {"loss": [1.0, 2.0], "reward": [0.5, None], "eval_reward": [0.25], "eval_runtime": [0.3]}
    assert summary == {"train_runtime": 3.0, "train_loss": 1.5}
