"""More paths that read a reward value, routed through the guard's classification (issue 21, part 3, follow-up):
a blended reward's inner values and token-level reward values."""
from __future__ import annotations

import math

import pytest
import torch

from grpo_custom.rewards.guard import BadRewardWarning, RewardFunctionError, guard_reward_function
from grpo_custom.rewards.reward_schedule import blend
from grpo_custom.rewards.scalar_schedule import Schedule

PROMPTS, COMPLETIONS = ["p0", "p0", "p1"], ["c0", "c1", "c2"]


def huge_at_one(prompts, completions, **kwargs):
    """A correct reward but for the int 10**400 (beyond float range) at sample 1."""
    return [0.5, 10**400, 1.0]


def accuracy(prompts, completions, **kwargs):
    return [1.0, 0.0, 0.0]


@pytest.mark.parametrize("step, expected", [(5, [0.75, None, 0.5]), (0, [0.5, None, 1.0])])
def test_a_blended_int_beyond_float_range_is_one_non_finite_sample_not_a_batch_exception(step, expected):
    """(1 − m)·a + m·b with m = step / 10: only sample 1 is unscored (non_finite), the others keep their blend."""
    guarded = guard_reward_function(blend(huge_at_one, accuracy, Schedule.linear(0.0, 1.0, 0, 10), name="mix"),
                                    "mix", policy="nan")
    with pytest.warns(BadRewardWarning, match=r"'mix': 1 reward\(s\) set to None \(non_finite=1\)"):
        assert guarded(prompts=PROMPTS, completions=COMPLETIONS, step=step) == pytest.approx(expected)
    assert guarded.bad_counts == {"exception": 0, "not_a_sequence": 0, "wrong_length": 0, "non_number": 0,
                                  "non_finite": 1}
    strict = guard_reward_function(blend(huge_at_one, accuracy, Schedule.constant(0.5), name="mix"), "mix")
    with pytest.raises(RewardFunctionError, match=r"'mix' returned a non-finite value at sample index 1"):
        strict(prompts=PROMPTS, completions=COMPLETIONS, step=step)


def three_token_reward(bad_token):
    """Per-token rewards for completions of three tokens each: 0.5 per token, ``bad_token`` at sample 1, token 2;
    and step rewards ``[(0, bad_token)]`` at sample 2."""
    def reward(prompts, completions, completion_ids=None, **kwargs):
        return [[0.5, 0.5, 0.5], [0.5, 0.5, bad_token], [(0, bad_token)]]

    return reward


@pytest.mark.parametrize("bad_token, described", [
    (10**5000, r"<16610-bit integer>"),  # repr() of it raises ValueError (over 4300 digits)
    (10**400, r"1" + "0" * 79 + r"\.\.\."),
    (torch.tensor(math.inf), r"Tensor of shape \(\)"),
], ids=["int-10**5000", "int-10**400", "tensor-inf"])
def test_token_and_step_values_beyond_float_range_are_non_finite_samples(bad_token, described):
    """Each bad value makes its own sample None (non_finite); sample 0 keeps its sum and its token rewards."""
    reward = three_token_reward(bad_token)
    ids = [[1, 2, 3]] * 3
    guarded = guard_reward_function(reward, "steps", policy="nan")
    with pytest.warns(BadRewardWarning, match=r"'steps': 2 reward\(s\) set to None \(non_finite=2\)"):
        assert guarded(prompts=PROMPTS, completions=["abc"] * 3, completion_ids=ids) == [1.5, None, None]
    assert sorted(guarded.token_level.per_token) == [0] and not guarded.token_level.steps
    strict = guard_reward_function(reward, "steps", policy="raise")
    with pytest.raises(RewardFunctionError, match=r"'steps' returned a token reward that is not a finite number at "
                                                  rf"sample index 1, token 2: {described}\."):
        strict(prompts=PROMPTS, completions=["abc"] * 3, completion_ids=ids)


def test_token_rewards_whose_sum_overflows_are_a_non_finite_sample():
    """Each token reward is finite, their sum (what TRL gets) is inf: that sample alone is unscored."""
    def reward(prompts, completions, completion_ids=None, **kwargs):
        return [[0.5, 0.5, 0.5], [1e308, 1e308, 0.0], [(0, 1e308), (1, 1e308)]]

    guarded = guard_reward_function(reward, "big", policy="nan")
    with pytest.warns(BadRewardWarning, match=r"'big': 2 reward\(s\) set to None \(non_finite=2\)"):
        assert guarded(prompts=PROMPTS, completions=["abc"] * 3, completion_ids=[[1, 2, 3]] * 3) == [1.5, None, None]
    assert sorted(guarded.token_level.per_token) == [0] and not guarded.token_level.steps
    with pytest.raises(RewardFunctionError, match=r"'big' returned token rewards at sample index 1 whose sum is inf"):
        guard_reward_function(reward, "big")(prompts=PROMPTS, completions=["abc"] * 3, completion_ids=[[1, 2, 3]] * 3)
