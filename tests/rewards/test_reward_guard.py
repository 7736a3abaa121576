"""Tests of grpo_custom.rewards.guard: every bad reward output under both policies."""
import asyncio
import inspect
import math
import numbers
from fractions import Fraction

import numpy as np
import pytest
import torch

from grpo_custom.rewards.guard import (
    BAD_KINDS,
    BadRewardWarning,
    RewardFunctionError,
    classify_reward_tensor,
    classify_reward_value,
    guard_reward_function,
)


class _RealWithoutFloat:
    """A type registered as numbers.Real whose float() fails (a symbolic number, say)."""

    def __float__(self):
        raise TypeError("cannot convert a symbol to float")


numbers.Real.register(_RealWithoutFloat)

PROMPTS = ["p0", "p1", "p2", "p3"]
COMPLETIONS = ["a", "bb", "ccc", "dddd"]


def returning(values):
    """A reward function that returns ``values`` whatever it is given."""

    def reward(prompts, completions, **kwargs):
        return values

    return reward


def raising(prompts, completions, **kwargs):
    raise KeyError("solution")


# (case id, reward function, bad indices, kind, text the "raise" message must contain)
BAD_CASES = [
    ("nan", returning([1.0, math.nan, 0.5, 0.0]), [1], "non_finite", "index 1: float nan"),
    ("plus_inf", returning([1.0, 2.0, 3.0, math.inf]), [3], "non_finite", "index 3: float inf"),
    ("minus_inf", returning([-math.inf, 2.0, -math.inf, 0.0]), [0, 2], "non_finite", "index 0: float -inf"),
    ("string", returning([1.0, 2.0, "0.5", 0.0]), [2], "non_number", "index 2: str '0.5'"),
    ("list", returning([[1.0], 2.0, 3.0, 0.0]), [0], "non_number", "index 0: list [1.0]"),
    ("tensor_1d", returning([1.0, torch.ones(2), 3.0, 0.0]), [1], "non_number", "index 1: Tensor of shape (2,)"),
    ("nan_tensor", returning([1.0, 2.0, torch.tensor(float("nan")), 0.0]), [2], "non_finite", "index 2: Tensor"),
]


@pytest.mark.parametrize("case, fn, bad_indices, kind, message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_raise_policy_names_function_index_and_value(case, fn, bad_indices, kind, message):
    guarded = guard_reward_function(fn, "my_reward", policy="raise")
    with pytest.raises(RewardFunctionError) as error:
        guarded(prompts=PROMPTS, completions=COMPLETIONS)
    assert "'my_reward'" in str(error.value)
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)
    assert guarded.bad_counts[kind] == 1  # the first bad value stops the call


@pytest.mark.parametrize("case, fn, bad_indices, kind, message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_nan_policy_sets_exactly_the_bad_indices_to_none(case, fn, bad_indices, kind, message):
    reports = []
    guarded = guard_reward_function(
        fn, "my_reward", policy="nan", on_bad=lambda name, counts: reports.append((name, counts))
    )
    with pytest.warns(BadRewardWarning, match=rf"'my_reward': {len(bad_indices)} reward\(s\) set to None \({kind}="):
        rewards = guarded(prompts=PROMPTS, completions=COMPLETIONS)
    assert [i for i, r in enumerate(rewards) if r is None] == bad_indices
    good = [float(v) for i, v in enumerate(fn(PROMPTS, COMPLETIONS)) if i not in bad_indices]
    assert [r for r in rewards if r is not None] == good
    expected_counts = {k: (len(bad_indices) if k == kind else 0) for k in BAD_KINDS}
    assert reports == [("my_reward", expected_counts)]
    assert guarded.bad_counts == expected_counts


def test_exception_raise_policy_chains_the_original_error():
    guarded = guard_reward_function(raising, "needs_solution", policy="raise")
    with pytest.raises(RewardFunctionError, match=r"'needs_solution' raised KeyError: 'solution'") as error:
        guarded(prompts=PROMPTS, completions=COMPLETIONS)
    assert isinstance(error.value.__cause__, KeyError)
    assert guarded.bad_counts["exception"] == 4


def test_exception_nan_policy_makes_whole_batch_none():
    reports = []
    guarded = guard_reward_function(raising, "needs_solution", policy="nan", on_bad=lambda n, c: reports.append(c))
    with pytest.warns(BadRewardWarning, match="4 reward"):
        assert guarded(prompts=PROMPTS, completions=COMPLETIONS) == [None] * 4
    assert reports == [{**dict.fromkeys(BAD_KINDS, 0), "exception": 4}]


@pytest.mark.parametrize("output, described, kind", [
    ([1.0, 2.0, 3.0], "3 values", "wrong_length"),
    (1.0, "a non-sequence float 1.0", "not_a_sequence"),
    # a dict is not read as its keys (list({...}) would be [0, 1, 2, 3], four "good" rewards)
    ({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}, r"a non-sequence dict \{0: 0.1", "not_a_sequence"),
    ("0.5", "a non-sequence str '0.5'", "not_a_sequence"),  # not its characters
    ({0.1, 0.2, 0.3, 0.4}, "a non-sequence set", "not_a_sequence"),  # no order
    ((x for x in [0.1, 0.2, 0.3, 0.4]), "a non-sequence generator", "not_a_sequence"),
    (np.ones((2, 2)), r"a non-sequence ndarray of shape \(2, 2\)", "not_a_sequence"),
])
def test_not_one_value_per_completion_under_both_policies(output, described, kind):
    with pytest.raises(RewardFunctionError, match=rf"'short' returned {described}.* for 4 completions"):
        guard_reward_function(returning(output), "short")(prompts=PROMPTS, completions=COMPLETIONS)
    guarded = guard_reward_function(returning(output), "short", policy="nan")
    with pytest.warns(BadRewardWarning, match=f"{kind}=4"):
        assert guarded(prompts=PROMPTS, completions=COMPLETIONS) == [None] * 4
    assert guarded.bad_counts == {**dict.fromkeys(BAD_KINDS, 0), kind: 4}


def test_one_dimensional_arrays_and_tensors_are_sequences():
    expected = [0.25, 0.5, 0.75, 1.0]
    for output in (np.array(expected), torch.tensor(expected, dtype=torch.float64), tuple(expected)):
        assert guard_reward_function(returning(output), "ok")(prompts=PROMPTS, completions=COMPLETIONS) == expected


def test_extra_kwargs_never_overwrite_the_call_s_own():
    seen = {}

    def reward(prompts, completions, **kwargs):
        seen.update(kwargs)
        return [0.0] * len(completions)

    guarded = guard_reward_function(reward, "r", extra_kwargs=lambda: {"step": 3, "stage": "warmup"})
    kwargs = {"step": ["a", "b", "c", "d"]}
    guarded(prompts=PROMPTS, completions=COMPLETIONS, **kwargs)
    assert seen == {"completion_ids": None, "step": ["a", "b", "c", "d"], "stage": "warmup"}
    assert kwargs == {"step": ["a", "b", "c", "d"]}


def test_good_values_are_converted_to_float_and_none_is_kept(recwarn):
    values = [True, np.float32(0.25), torch.tensor(-2.0), None]
    guarded = guard_reward_function(returning(values), "mixed", policy="nan")
    rewards = guarded(prompts=PROMPTS, completions=COMPLETIONS)
    assert rewards == [1.0, 0.25, -2.0, None]
    assert all(type(r) is float for r in rewards[:3])
    assert not [w for w in recwarn if issubclass(w.category, BadRewardWarning)]
    assert guarded.bad_counts == dict.fromkeys(BAD_KINDS, 0)


def test_counts_accumulate_over_calls():
    guarded = guard_reward_function(returning([math.nan, math.nan, 1.0, "x"]), "acc", policy="nan")
    with pytest.warns(BadRewardWarning):
        guarded(prompts=PROMPTS, completions=COMPLETIONS)
        guarded(prompts=PROMPTS, completions=COMPLETIONS)
    assert guarded.bad_counts == {**dict.fromkeys(BAD_KINDS, 0), "non_number": 2, "non_finite": 4}


def test_name_is_preserved_and_kwargs_are_forwarded():
    seen = {}

    def original(prompts, completions, completion_ids=None, **kwargs):
        seen.update(kwargs, completion_ids=completion_ids)
        return [0.0] * len(prompts)

    guarded = guard_reward_function(original, "renamed")
    assert guarded.__name__ == "renamed"
    guarded(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1]] * 4, solution=["1"] * 4, step=3)
    assert seen == {"completion_ids": [[1]] * 4, "solution": ["1"] * 4, "step": 3}


def test_async_function_stays_async_and_is_validated():
    async def judge(prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [0.5, math.inf, 1, None]

    guarded = guard_reward_function(judge, "judge", policy="nan")
    assert inspect.iscoroutinefunction(guarded)
    assert guarded.__name__ == "judge"
    with pytest.warns(BadRewardWarning, match="non_finite=1"):
        assert asyncio.run(guarded(prompts=PROMPTS, completions=COMPLETIONS)) == [0.5, None, 1.0, None]
    strict = guard_reward_function(judge, "judge", policy="raise")
    with pytest.raises(RewardFunctionError, match="index 1: float inf"):
        asyncio.run(strict(prompts=PROMPTS, completions=COMPLETIONS))


def test_async_exception_is_chained():
    async def broken(prompts, completions, **kwargs):
        raise TimeoutError("judge down")

    with pytest.raises(RewardFunctionError, match="'broken' raised TimeoutError: judge down") as error:
        asyncio.run(guard_reward_function(broken, "broken")(prompts=PROMPTS, completions=COMPLETIONS))
    assert isinstance(error.value.__cause__, TimeoutError)


def test_unknown_policy_lists_valid_ones():
    with pytest.raises(ValueError, match="'zero'.*raise, nan"):
        guard_reward_function(raising, "r", policy="zero")


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, (None, None)),
        (3, (3.0, None)),
        (False, (0.0, None)),
        (np.int64(7), (7.0, None)),
        (np.bool_(True), (1.0, None)),
        (np.array(0.5), (0.5, None)),
        (torch.tensor(2), (2.0, None)),
        (np.float64("nan"), (None, "non_finite")),
        (np.array([1.0]), (None, "non_number")),
        (torch.tensor([1.0]), (None, "non_number")),
        (1j, (None, "non_number")),
        ("1", (None, "non_number")),
        (10**400, (None, "non_finite")),  # an int beyond float64: inf as a float (was a bare OverflowError)
        (-(10**400), (None, "non_finite")),
        (Fraction(10**400, 3), (None, "non_finite")),
        (Fraction(1, 4), (0.25, None)),
        (np.longdouble("1e4000"), (None, "non_finite")),
        (_RealWithoutFloat(), (None, "non_number")),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, (int, Fraction)) else None,
)
def test_classify_reward_value(value, expected):
    assert classify_reward_value(value) == expected


@pytest.mark.parametrize("policy", ["raise", "nan"])
def test_int_beyond_float_range_is_a_non_finite_value_under_both_policies(policy):
    """The issue's example: 10**400 became a bare OverflowError; the guard classifies it like inf."""
    guarded = guard_reward_function(returning([0.5, 10**400, 0.25, 1.0]), "huge", policy=policy)
    if policy == "raise":
        with pytest.raises(RewardFunctionError, match=r"'huge' returned a non-finite value at sample index 1: int 1000"):
            guarded(prompts=PROMPTS, completions=COMPLETIONS)
    else:
        with pytest.warns(BadRewardWarning, match=r"'huge': 1 reward\(s\) set to None \(non_finite=1\)"):
            assert guarded(prompts=PROMPTS, completions=COMPLETIONS) == [0.5, None, 0.25, 1.0]
    assert guarded.bad_counts["non_finite"] == 1


def test_an_int_too_long_to_print_is_described_by_its_bits():
    guarded = guard_reward_function(returning([10**5000, 0.0, 0.0, 0.0]), "huge")
    with pytest.raises(RewardFunctionError, match=r"sample index 0: int <16610-bit integer>"):
        guarded(prompts=PROMPTS, completions=COMPLETIONS)


def test_classify_reward_tensor_matches_the_scalar_classification():
    values = torch.tensor([1.5, math.nan, math.inf, -math.inf, 0.0])
    scores, bad = classify_reward_tensor(values, nan_means_unscored=True)
    assert bad.tolist() == [False, False, True, True, False]
    assert scores.dtype == torch.float64 and torch.equal(torch.isnan(scores), torch.tensor([0, 1, 1, 1, 0]).bool())
    scores, bad = classify_reward_tensor(values, nan_means_unscored=False)
    assert bad.tolist() == [classify_reward_value(v)[1] == "non_finite" for v in values.tolist()]
    with pytest.raises(TypeError, match="needs a real tensor, got list"):
        classify_reward_tensor([1.0], nan_means_unscored=True)
