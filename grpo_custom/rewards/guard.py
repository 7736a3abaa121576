"""Validate what a reward function returns before TRL turns it into a reward tensor.

TRL converts a reward function's output with ``torch.tensor(values)``: a NaN or ±inf reward then
poisons the group mean/std of every advantage in its group, a string fails deep inside torch, and
an exception stops training with no hint of which sample caused it. :func:`guard_reward_function`
wraps a reward function and checks every call:

* ``"raise"`` policy: the first problem raises :class:`RewardFunctionError` naming the function,
  the sample index and the value.
* ``"nan"`` policy: a bad value becomes ``None`` (TRL's "cannot score", turned into NaN and
  ignored by its NaN-aware group statistics); an exception or a wrong number of values makes the
  whole batch ``None``. Each call with problems emits a :class:`BadRewardWarning` and calls
  ``on_bad(name, counts)``.
"""
from __future__ import annotations

import inspect
import math
import numbers
import warnings
from typing import Any, Callable

import numpy as np
import torch

from grpo_custom.rewards.token_rewards import TokenRewardRecorder, is_token_level

POLICIES = ("raise", "nan")
BAD_KINDS = ("exception", "not_a_sequence", "wrong_length", "non_number", "non_finite")


class RewardFunctionError(ValueError):
    """A reward function raised, returned the wrong number of values, a non-number, NaN or ±inf."""


class BadRewardWarning(UserWarning):
    """Emitted (policy ``"nan"``) when some rewards of a batch were replaced by ``None``."""


def classify_reward_value(value: Any) -> tuple[float | None, str | None]:
    """Convert one reward value to ``float | None`` and say what is wrong with it, if anything.

    Accepted: ``None`` (TRL's "cannot score"), ``bool``, ``int``, ``float``, numpy scalars and
    0-d numpy arrays / torch tensors. Anything else (a string, a list, a tensor with a shape) is a
    ``"non_number"``; NaN and ±inf are ``"non_finite"``.

    A real number beyond float64's range (e.g. the ``int`` ``10**400``, whose ``float()`` raises
    ``OverflowError``) is ±inf as a float: ``"non_finite"``. A ``numbers.Real`` whose ``float()`` raises
    ``TypeError``/``ValueError`` is a ``"non_number"``. This is the one classification of a reward value:
    the guard, the start-up probes, routed rewards, reward models, running moments and the reward metrics
    (through :func:`classify_reward_tensor` for tensors) use it.

    Returns:
        ``(float_value, None)`` for a good number, ``(None, None)`` for ``None``, and
        ``(None, kind)`` with ``kind`` in ``("non_number", "non_finite")`` for a bad value.
    """
    if value is None:
        return None, None
    try:
        if isinstance(value, torch.Tensor):
            if value.dim() != 0 or value.is_complex():
                return None, "non_number"
            number = float(value.item())
        elif isinstance(value, np.ndarray):
            if value.ndim != 0 or value.dtype.kind not in "biuf":
                return None, "non_number"
            number = float(value.item())
        elif isinstance(value, (bool, np.bool_, numbers.Real)):
            number = float(value)
        else:
            return None, "non_number"
    except OverflowError:  # finite as a Python number, ±inf as a float: the reward tensor would hold inf
        return None, "non_finite"
    except (TypeError, ValueError):
        return None, "non_number"
    if not math.isfinite(number):
        return None, "non_finite"
    return number, None


def classify_reward_tensor(values: torch.Tensor, nan_means_unscored: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`classify_reward_value` element-wise for a real tensor of rewards (any shape).

    In a tensor a value is a float already, so the only bad kind is ``"non_finite"``: ±inf always, NaN unless
    ``nan_means_unscored`` (in the trainer's ``rewards_per_func`` NaN is TRL's "cannot score", the ``None`` the
    guard lets through; in a reward model's raw logits NaN is a bad score).

    Args:
        values: real tensor of rewards, any shape.
        nan_means_unscored: whether NaN means "cannot score" (not bad) rather than a non-finite score.

    Returns:
        ``(scores, non_finite)``: ``scores`` is ``values`` as float64 with NaN at every entry that is not a good
        number (so NaN-aware statistics leave it out), ``non_finite`` the boolean mask of the bad entries.

    Raises:
        TypeError: ``values`` is not a real (float, int or bool) tensor.
    """
    if not isinstance(values, torch.Tensor) or values.is_complex():
        raise TypeError(f"classify_reward_tensor needs a real tensor, got {describe_reward_value(values)}.")
    scores = values.detach().to(torch.float64)
    non_finite = torch.isinf(scores) if nan_means_unscored else ~torch.isfinite(scores)
    return torch.where(torch.isfinite(scores), scores, torch.full_like(scores, math.nan)), non_finite


def reward_values(output: Any) -> list | None:
    """The values of a reward function's output as a list, or None when the output is not a sequence of values.

    A sequence is a ``list``, ``tuple``, 1-D ``numpy`` array or 1-D ``torch`` tensor (one value per completion).
    Anything else is refused rather than reinterpreted: a ``dict`` (``list(d)`` would be its keys), a string
    (its characters), a set (no order), a generator, a scalar, an array of another shape.
    """
    if isinstance(output, (list, tuple)):
        return list(output)
    if isinstance(output, (np.ndarray, torch.Tensor)):
        return list(output) if output.ndim == 1 else None
    return None


def describe_reward_value(value: Any, width: int = 80, typed: bool = True) -> str:
    """A short description of a (bad) reward value for messages: type (unless not ``typed``), shape for arrays,
    repr cut to ``width`` characters.

    Never raises: an ``int`` too long for ``repr`` (over ``sys.get_int_max_str_digits()`` digits) is described
    by its number of bits, a ``repr`` that raises by its type.
    """
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    try:
        text = repr(value)
    except ValueError:  # int too long for str()
        text = f"<{value.bit_length()}-bit integer>" if isinstance(value, int) else "<unprintable>"
    except Exception:  # noqa: BLE001 - a user's __repr__; the description must not fail the message
        text = "<unprintable>"
    text = text[:width] + "..." if len(text) > width else text
    return f"{type(value).__name__} {text}" if typed else text


def guard_reward_function(
    fn: Callable,
    name: str,
    policy: str = "raise",
    on_bad: Callable[[str, dict[str, int]], None] | None = None,
    reraise: tuple[type[Exception], ...] = (),
    extra_kwargs: Callable[[], dict[str, Any]] | None = None,
) -> Callable:
    """Wrap a TRL reward function so that bad outputs raise (``"raise"``) or become ``None`` (``"nan"``).

    The wrapper has TRL's signature ``(prompts, completions, completion_ids=None, **kwargs)``,
    returns ``list[float | None]`` (numbers converted to ``float``), is ``async`` when ``fn`` is,
    and is named ``name`` (TRL logs rewards under ``rewards/<__name__>``).

    Problems detected per call: ``fn`` raises (``"exception"``); the output is not a sequence of values
    (:func:`reward_values`: e.g. a dict, a string, a generator; ``"not_a_sequence"``); the number of values
    differs from ``len(prompts)`` (``"wrong_length"``); a value is not a number (``"non_number"``); a value is
    NaN or ±inf (``"non_finite"``).

    Args:
        fn: the reward function (sync or async).
        name: the wrapper's ``__name__``, also used in messages.
        policy: ``"raise"`` raises :class:`RewardFunctionError`; ``"nan"`` replaces bad values by
            ``None`` (the whole batch for ``"exception"``/``"wrong_length"``), warns with
            :class:`BadRewardWarning` and calls ``on_bad``.
        on_bad: ``on_bad(name, counts)`` called (policy ``"nan"``) after a call with problems;
            ``counts`` maps each kind of :data:`BAD_KINDS` to the number of samples it made ``None``.
        reraise: exception types that propagate unchanged under both policies: configuration errors
            (e.g. :class:`grpo_custom.rewards.tasks.TaskRoutingError`, a sample of an unknown task), not bad rewards.
        extra_kwargs: ``extra_kwargs()`` is called per call; its items are passed to ``fn`` as keyword
            arguments under names the call's own keyword arguments (TRL's dataset columns) do not use: a dataset
            column is never overwritten. The caller's kwargs dict is not modified.

    Token-level rewards (issue 22): when the call has ``completion_ids`` (TRL always passes them), a list
    per completion is a token-level reward (:mod:`grpo_custom.rewards.token_rewards`): checked per sample
    (a wrong length names the function and sample index), TRL gets its sum, and ``wrapper.token_level``
    keeps the call's :class:`~grpo_custom.rewards.token_rewards.TokenRewardBatch` (None without any).

    Returns:
        The wrapper; ``wrapper.bad_counts`` holds the cumulative per-kind sample counts (updated
        under both policies) and ``wrapper.__wrapped__`` is ``fn``.
    """
    if policy not in POLICIES:
        raise ValueError(f"Unknown reward guard policy {policy!r}; valid policies: {', '.join(POLICIES)}.")
    if not callable(fn):
        raise TypeError(f"Reward function {name!r} must be callable, got {type(fn).__name__}.")
    if not isinstance(name, str) or not name:
        raise ValueError(f"A guarded reward function needs a non-empty string name, got {name!r}.")
    if not isinstance(reraise, tuple) or not all(isinstance(t, type) and issubclass(t, Exception) for t in reraise):
        raise TypeError(f"reraise must be a tuple of exception classes, got {reraise!r}.")

    def call_kwargs(kwargs: dict) -> dict:
        if extra_kwargs is None:
            return kwargs
        return {**{key: value for key, value in extra_kwargs().items() if key not in kwargs}, **kwargs}

    def report(counts: dict[str, int]) -> None:
        for kind, count in counts.items():
            wrapper.bad_counts[kind] += count
        if policy == "nan" and any(counts.values()):
            details = ", ".join(f"{kind}={count}" for kind, count in counts.items() if count)
            warnings.warn(
                f"Reward function {name!r}: {sum(counts.values())} reward(s) set to None ({details}).",
                BadRewardWarning,
                stacklevel=3,
            )
            if on_bad is not None:
                on_bad(name, dict(counts))

    def on_exception(error: Exception, num_samples: int) -> list[None]:
        if isinstance(error, reraise):
            raise error
        wrapper.token_level = None  # issue 22
        report({**dict.fromkeys(BAD_KINDS, 0), "exception": num_samples})
        if policy == "raise":
            raise RewardFunctionError(f"Reward function {name!r} raised {type(error).__name__}: {error}") from error
        return [None] * num_samples

    def validate(output: Any, num_samples: int, completion_ids=None, completions=None) -> list[float | None]:
        counts = dict.fromkeys(BAD_KINDS, 0)
        wrapper.token_level = None  # issue 22: token-level rewards of this call (rewards/token_rewards.py)
        token_level = TokenRewardRecorder(name, completion_ids, completions)
        values = reward_values(output)
        if values is None or len(values) != num_samples:
            counts["not_a_sequence" if values is None else "wrong_length"] = num_samples
            report(counts)
            got = f"{len(values)} values" if values is not None else f"a non-sequence {describe_reward_value(output)}"
            if policy == "raise":
                raise RewardFunctionError(
                    f"Reward function {name!r} returned {got} for {num_samples} completions; "
                    "it must return a list (or 1-D array) with one value per completion."
                )
            return [None] * num_samples
        rewards: list[float | None] = []
        for index, value in enumerate(values):
            if completion_ids is not None and is_token_level(value):  # issue 22: TRL gets the sum, tokens kept aside
                number, kind = token_level.accept(index, value)
            else:
                number, kind = classify_reward_value(value)
            if kind is not None:
                counts[kind] += 1
                if policy == "raise":
                    report(counts)
                    problem = "a non-finite value" if kind == "non_finite" else "a non-number"
                    raise RewardFunctionError(token_level.problems.get(index) or
                        f"Reward function {name!r} returned {problem} at sample index {index}: {describe_reward_value(value)}."
                    )
            rewards.append(number)
        report(counts)
        wrapper.token_level = token_level.result()
        return rewards

    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):

        async def wrapper(prompts, completions, completion_ids=None, **kwargs):
            try:
                output = await fn(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                  **call_kwargs(kwargs))
            except Exception as error:  # noqa: BLE001 - reported per policy, chained when raised
                return on_exception(error, len(prompts))
            return validate(output, len(prompts), completion_ids, completions)

    else:

        def wrapper(prompts, completions, completion_ids=None, **kwargs):
            try:
                output = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **call_kwargs(kwargs))
            except Exception as error:  # noqa: BLE001 - reported per policy, chained when raised
                return on_exception(error, len(prompts))
            return validate(output, len(prompts), completion_ids, completions)

    wrapper.__name__ = name
    wrapper.__qualname__ = name
    wrapper.__doc__ = f"Reward function {name!r} checked by guard_reward_function (policy={policy!r})."
    wrapper.bad_counts = dict.fromkeys(BAD_KINDS, 0)
    wrapper.token_level = None  # issue 22: a TokenRewardBatch after a call that returned token-level rewards
    wrapper.__wrapped__ = fn
    return wrapper
