"""Tests of grpo_custom.rewards.builtin: hand-computed values, direction, parsing, errors."""
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpo_custom.rewards.builtin import (
    THINK_ANSWER_PATTERN,
    completion_text,
    format_reward,
    last_boxed,
    length_reward,
    math_answer_reward,
    parse_math_answer,
)


def call(fn, completions, **kwargs):
    return fn(prompts=["p"] * len(completions), completions=completions, **kwargs)


# lengths 10 (d=0), 7 (d=-3), 14 (d=4) for target 10 and scale 2: |d|/scale = 0, 1.5, 2
LENGTH_CASES = [
    ("neg_abs", [0.0, -1.5, -2.0]),
    ("reciprocal", [1.0, 1 / 2.5, 1 / 3.0]),
    ("exp", [1.0, math.exp(-1.5), math.exp(-2.0)]),
]


@pytest.mark.parametrize("shape, expected", LENGTH_CASES)
def test_length_reward_values_by_hand(shape, expected):
    reward = length_reward(10, shape=shape, scale=2.0)
    assert reward.__name__ == "length_reward"
    assert call(reward, ["x" * 10, "x" * 7, "x" * 14]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", ["neg_abs", "reciprocal", "exp"])
@given(target=st.integers(0, 60), a=st.integers(0, 120), b=st.integers(0, 120))
def test_length_reward_closer_to_target_is_higher(shape, target, a, b):
    reward = length_reward(target, shape=shape)
    ra, rb = call(reward, ["y" * a, "y" * b])
    if abs(a - target) < abs(b - target):
        assert ra > rb
    elif abs(a - target) == abs(b - target):
        assert ra == rb


def test_length_reward_tokens_uses_completion_ids_and_conversational_text():
    reward = length_reward(4, shape="neg_abs", unit="tokens")
    completions = [[{"role": "assistant", "content": "ignored text length"}]] * 2
    assert call(reward, completions, completion_ids=[[1, 2, 3, 4], [1]]) == [0.0, -3.0]
    with pytest.raises(ValueError, match="completion_ids"):
        call(reward, ["abc"])
    chars = length_reward(4, unit="chars")
    assert call(chars, [[{"role": "assistant", "content": "abcdef"}]]) == [-2.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": "square"}, "shape 'square'.*neg_abs, reciprocal, exp"),
        ({"unit": "words"}, "unit 'words'.*chars, tokens"),
        ({"scale": 0.0}, "scale"),
        ({"scale": math.inf}, "scale"),
    ],
)
def test_length_reward_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        length_reward(10, **kwargs)
    with pytest.raises(ValueError, match="target"):
        length_reward(-1)


def test_format_reward_think_answer():
    reward = format_reward(THINK_ANSWER_PATTERN)
    completions = [
        "<think>a\nb</think>\n<answer>42</answer>",
        "<think>a</think><answer>42</answer> trailing text",
        "<answer>42</answer>",
        "  <think></think><answer></answer>\n",
    ]
    assert call(reward, completions) == [1.0, 0.0, 0.0, 1.0]
    assert reward.__name__ == "format_reward"


def test_format_reward_search_and_flags():
    assert call(format_reward(r"answer:\s*\d+", full_match=False), ["the answer: 7.", "none"]) == [1.0, 0.0]
    assert call(format_reward(r"YES", flags=re.IGNORECASE), ["yes", "no"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        format_reward("(unclosed")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is 42.", 42.0),
        ("first 3 then -17", -17.0),
        ("total: 1,234,567 apples", 1234567.0),
        ("pi is about 3.14159", 3.14159),
        ("half is 1/2", 0.5),
        ("ratio -3/4", -0.75),
        ("5-3 equals 2", 2.0),
        ("5-3", 3.0),
        ("values 1,2345", 2345.0),
        ("\\boxed{\\frac{3}{4}} and later 9", 0.75),
        ("\\boxed{1} then \\boxed{x = -2.5}", -2.5),
        ("\\boxed{\\text{ } 1{,}000}", 1000.0),
        ("\\boxed{12\\%}", 12.0),
        ("\\boxed{\\$1,000}", 1000.0),
        ("\\boxed{x+1}", None),
        ("\\boxed{1/0}", None),
        ("\\boxed{3", None),
        ("no numbers here", None),
    ],
)
def test_parse_math_answer(text, expected):
    assert parse_math_answer(text) == expected


def test_last_boxed_balances_nested_braces():
    assert last_boxed("a \\boxed{x} b \\boxed{\\frac{1}{2}+{3}} c") == "\\frac{1}{2}+{3}"
    assert last_boxed("\\boxed{{}") is None
    assert last_boxed("nothing") is None


def test_math_answer_reward_by_hand():
    reward = math_answer_reward()
    completions = ["... \\boxed{1,234}", "it is 0.5", "it is 1/3", "I think 7", "no answer", "#### 10"]
    solutions = ["1234", "\\boxed{\\frac{1}{2}}", "0.3333", "8", "3", "not a number"]
    assert call(reward, completions, solution=solutions) == [1.0, 1.0, 0.0, 0.0, 0.0, None]
    assert reward.__name__ == "math_answer_reward"


def test_math_answer_reward_tolerance_relative_and_absolute():
    # |a - b| <= tol * max(1, |b|) (relative) or <= tol (absolute)
    relative = math_answer_reward(tolerance=1e-3)
    absolute = math_answer_reward(tolerance=1e-3, relative=False)
    completions = ["1000.9", "1001.1", "0.0009", "0.0011"]
    solutions = ["1000", "1000", "0", "0"]
    assert call(relative, completions, solution=solutions) == [1.0, 0.0, 1.0, 0.0]
    assert call(absolute, completions, solution=solutions) == [0.0, 0.0, 1.0, 0.0]
    # |1/3 - 0.3333| = 3.33e-5
    assert call(math_answer_reward(tolerance=1e-5), ["it is 1/3"], solution=["0.3333"]) == [0.0]
    assert call(math_answer_reward(tolerance=1e-4), ["it is 1/3"], solution=["0.3333"]) == [1.0]


def test_math_answer_reward_column_errors():
    reward = math_answer_reward(solution_column="answer")
    with pytest.raises(ValueError, match="math_answer_reward needs the dataset column 'answer'.*'solution'"):
        call(reward, ["1"], solution=["1"], trainer_state=None)
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 1 completions"):
        call(reward, ["1"], answer=["1", "2"])
    with pytest.raises(ValueError, match="tolerance"):
        math_answer_reward(tolerance=-1)


def test_completion_text_forms_and_error():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "image"}, {"text": "y"}]}]
    assert completion_text(parts) == "xy"
    with pytest.raises(TypeError, match="sample index 3"):
        completion_text(42, index=3)
