"""Built-in reward functions with TRL's signature; for every one of them higher is better.

GRPO maximizes reward, so each function below returns its largest value for the output we want:
the target length, the requested format, the correct answer.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any, Callable, Sequence

LENGTH_SHAPES = ("neg_abs", "reciprocal", "exp")
LENGTH_UNITS = ("chars", "tokens")

THINK_ANSWER_PATTERN = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"
"""``<think>...</think>`` then ``<answer>...</answer>``, optional whitespace around (use with ``re.DOTALL``)."""


def completion_text(completion: Any, index: int | None = None) -> str:
    """The text of one TRL completion: the string itself, or the content of the last message.

    Conversational completions are lists of ``{"role", "content"}`` messages; a content given as a
    list of parts (``[{"type": "text", "text": ...}, ...]``) is joined from its text parts.

    Args:
        completion: a string or a list of message dicts.
        index: the sample index, named in the error for an unsupported completion.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    where = "" if index is None else f" at sample index {index}"
    raise TypeError(
        f"Unsupported completion{where}: expected a string or a list of {{'role', 'content'}} messages, "
        f"got {type(completion).__name__} {str(completion)[:80]!r}."
    )


def dataset_column(kwargs: dict, column: str, reward_name: str, num_completions: int) -> Sequence:
    """The dataset column ``column`` from a reward function's kwargs, checked to hold one value per completion.

    Raises:
        ValueError: naming ``reward_name`` and ``column`` if it is missing or has the wrong length.
    """
    if column not in kwargs:
        available = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric"))
        raise ValueError(
            f"{reward_name} needs the dataset column {column!r}, which is not in the reward kwargs "
            f"(available columns: {available}); add it to the dataset or pass the right column name."
        )
    values = kwargs[column]
    if len(values) != num_completions:
        raise ValueError(
            f"{reward_name}: column {column!r} has {len(values)} values for {num_completions} completions."
        )
    return values


def length_reward(target: float, shape: str = "neg_abs", scale: float = 1.0, unit: str = "chars") -> Callable:
    """Reward peaked at the target length; with ``d = length - target``:

    * ``"neg_abs"``:    ``-|d| / scale``          (0 at the target, falls linearly)
    * ``"reciprocal"``: ``1 / (1 + |d| / scale)`` (1 at the target, in (0, 1])
    * ``"exp"``:        ``exp(-|d| / scale)``     (1 at the target, in (0, 1])

    Higher is better: every shape strictly decreases with ``|d|``. ``scale`` is a length scale in
    ``unit``s (e.g. ``exp`` falls to 1/e at ``scale`` units away).

    Args:
        target: target length (>= 0).
        shape: one of :data:`LENGTH_SHAPES`.
        scale: positive length scale.
        unit: ``"chars"`` (length of the completion text) or ``"tokens"`` (length of each
            ``completion_ids`` entry, which must then be passed).
    """
    if shape not in LENGTH_SHAPES:
        raise ValueError(f"Unknown length_reward shape {shape!r}; valid shapes: {', '.join(LENGTH_SHAPES)}.")
    if unit not in LENGTH_UNITS:
        raise ValueError(f"Unknown length_reward unit {unit!r}; valid units: {', '.join(LENGTH_UNITS)}.")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target >= 0:
        raise ValueError(f"length_reward target must be a number >= 0, got {target!r}.")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"length_reward scale must be a finite number > 0, got {scale!r}.")

    def length_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        if unit == "tokens":
            if completion_ids is None:
                raise ValueError("length_reward(unit='tokens') needs completion_ids, but none were passed.")
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(completion_text(c, i)) for i, c in enumerate(completions)]
        distances = [abs(length - target) / scale for length in lengths]
        if shape == "neg_abs":
            return [-d for d in distances]
        if shape == "reciprocal":
            return [1.0 / (1.0 + d) for d in distances]
        return [math.exp(-d) for d in distances]

    length_reward.__doc__ = f"Length reward ({shape}, target {target} {unit}, scale {scale}); higher is better."
    length_reward.higher_is_better = True  # declared for the start-up direction check
    return length_reward


def format_reward(pattern: str, flags: int = re.DOTALL, full_match: bool = True) -> Callable:
    """Reward ``1.0`` if the completion matches the regex ``pattern`` else ``0.0`` (higher is better).

    Args:
        pattern: a regular expression, e.g. :data:`THINK_ANSWER_PATTERN`.
        flags: ``re`` flags (default ``re.DOTALL`` so ``.`` spans lines).
        full_match: match the whole completion (``re.fullmatch``) rather than anywhere (``re.search``).
    """
    try:
        regex = re.compile(pattern, flags)
    except re.error as error:
        raise ValueError(f"format_reward pattern {pattern!r} is not a valid regular expression: {error}") from error
    match = regex.fullmatch if full_match else regex.search

    def format_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        return [1.0 if match(completion_text(c, i)) else 0.0 for i, c in enumerate(completions)]

    format_reward.__doc__ = f"1.0 if the completion {'fully ' if full_match else ''}matches {pattern!r}, else 0.0."
    format_reward.higher_is_better = True  # declared for the start-up direction check
    return format_reward


_PLAIN = r"\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_SIGNED = rf"(?:(?<![\w)])-)?(?:{_PLAIN})"
_NUMBER_RE = re.compile(rf"({_SIGNED})(?:\s*/\s*({_SIGNED}))?")
_LATEX_FRACTION_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_NOISE_RE = re.compile(r"\\text\s*\{[^{}]*\}|\\mathrm\s*\{[^{}]*\}|\\[,!;: ]|\\?[$%]|\\left|\\right|\s+")


def _to_number(numerator: str, denominator: str | None) -> float | None:
    """``numerator`` or ``numerator / denominator`` as a float (thousands commas allowed); None for x/0."""
    value = Fraction(numerator.replace(",", ""))
    if denominator is not None:
        divisor = Fraction(denominator.replace(",", ""))
        if divisor == 0:
            return None
        value /= divisor
    return float(value)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces balanced); None if absent or unclosed."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0 or text[start + len("\\boxed") : brace].strip():
        return None
    depth = 0
    for position in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[brace + 1 : position]
    return None


def parse_math_answer(text: str) -> float | None:
    """The numeric answer of ``text``: the last ``\\boxed{...}`` if any, else the last number.

    A boxed answer must be one number after removing LaTeX noise (``$``, ``\\%``, ``{,}``, ``\\text{..}``,
    spacing commands, a leading ``x =``); ``\\frac{a}{b}`` is read as ``a/b``. Numbers may be
    negative, decimal, use thousands commas (``1,234``) or be simple fractions ``a/b``.

    Returns:
        The value as a float, or None when nothing parses (or a fraction divides by zero).
    """
    if "\\boxed" in text:
        boxed = last_boxed(text)
        if boxed is None:
            return None
        content = _LATEX_FRACTION_RE.sub(r"\1/\2", boxed).replace("{,}", ",")
        content = _LATEX_NOISE_RE.sub("", content)
        content = re.sub(r"^[A-Za-z]\w*=", "", content)
        match = _NUMBER_RE.fullmatch(content)
        return _to_number(match.group(1), match.group(2)) if match else None
    matches = _NUMBER_RE.findall(text)
    if not matches:
        return None
    numerator, denominator = matches[-1]
    return _to_number(numerator, denominator or None)


def math_answer_reward(solution_column: str = "solution", tolerance: float = 1e-6, relative: bool = True) -> Callable:
    """Reward ``1.0`` if the completion's answer equals the reference numerically, else ``0.0`` (higher is better).

    Both the completion and the reference (``kwargs[solution_column]``) are parsed with
    :func:`parse_math_answer`. With answer ``a`` and reference ``b`` the answer is correct when
    ``|a - b| <= tolerance * max(1, |b|)`` (``relative=True``) or ``|a - b| <= tolerance``
    (``relative=False``). An unparseable completion scores ``0.0``; an unparseable reference
    scores ``None`` (TRL: cannot score) because the sample cannot be graded.

    Args:
        solution_column: dataset column holding the reference answers.
        tolerance: non-negative tolerance.
        relative: scale the tolerance by ``max(1, |b|)``.
    """
    if not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"math_answer_reward tolerance must be a number >= 0, got {tolerance!r}.")

    def math_answer_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        solutions = dataset_column(kwargs, solution_column, "math_answer_reward", len(completions))
        rewards: list[float | None] = []
        for index, (completion, solution) in enumerate(zip(completions, solutions)):
            reference = parse_math_answer(str(solution))
            if reference is None:
                rewards.append(None)
                continue
            answer = parse_math_answer(completion_text(completion, index))
            allowed = tolerance * max(1.0, abs(reference)) if relative else tolerance
            rewards.append(1.0 if answer is not None and abs(answer - reference) <= allowed else 0.0)
        return rewards

    math_answer_reward.higher_is_better = True  # declared for the start-up direction check
    return math_answer_reward
