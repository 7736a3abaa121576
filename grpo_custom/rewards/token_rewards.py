"""Token-level rewards: what a reward function may return per completion instead of one float.

Per completion a reward function returns one of:

* a number (or None): an outcome reward, placed on the completion's last scored token;
* a list (tuple, 1-D array or tensor) of numbers, one per completion token (``len(completion_ids[i])``,
  the ``completion_ids`` TRL passes to reward functions), placed on those tokens;
* a list of ``(character_offset, value)`` pairs: step rewards, each placed on the token holding that
  character of the completion text (the text TRL decodes, ``skip_special_tokens=True``: the
  ``completions[i]`` string, or a conversational completion's message content); several steps on one
  token add up. An empty list means no step rewards (all 0).

TRL turns each reward function's output into one float per completion, so the reward guard
(``rewards/guard.py``) hands TRL the sum of a completion's token rewards and keeps the token rewards
on the side (:class:`TokenRewardRecorder`, ``wrapper.token_level``); the advantage hook places them
([N, T], :func:`place_token_rewards`) for the estimators that read ``AdvantageInputs.token_rewards``
(``gae``, ``reinforce_pp`` with γ < 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["TokenRewardBatch", "TokenRewardRecorder", "is_token_level", "place_token_rewards", "token_char_spans"]


def is_token_level(value: Any) -> bool:
    """Whether one completion's reward ``value`` is token-level: a list/tuple, or a 1-D array or tensor."""
    if isinstance(value, (list, tuple)):
        return True
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1


def _is_pair(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 2


# --- issue 21 part 3: token and step values go through the guard's one classification (rewards/guard.py) ---
def _number(value: Any) -> tuple[float | None, str | None]:
    """One token or step reward value through :func:`grpo_custom.rewards.guard.classify_reward_value`.

    Returns ``(float, None)`` for a finite number, else ``(None, kind)``: ``"non_finite"`` (NaN, ±inf, an int
    beyond float range such as ``10**400``) or ``"non_number"`` (a string, a nested list, ``None``: a token
    cannot be "cannot score").
    """
    from grpo_custom.rewards.guard import classify_reward_value  # lazy: guard.py imports this module

    if value is None:
        return None, "non_number"
    return classify_reward_value(value)


def _describe(value: Any) -> str:
    """:func:`grpo_custom.rewards.guard.describe_reward_value` untyped: never raises (e.g. on ``10**5000``)."""
    from grpo_custom.rewards.guard import describe_reward_value  # lazy: guard.py imports this module

    return describe_reward_value(value, typed=False)


def _sum_problem(name: str, index: int, total: float) -> str | None:
    """The message when the sum TRL gets for sample ``index`` is not a good number (finite token rewards can sum
    past float64's range: ``[1e308, 1e308]``), else None."""
    if _number(total)[1] is None:
        return None
    return (f"Reward function {name!r} returned token rewards at sample index {index} whose sum is "
            f"{_describe(total)}; TRL needs a finite sum.")
# --- end issue 21 part 3 ---


def completion_text(completion: Any) -> str | None:
    """The text of a completion as a reward function sees it: a string, or the joined ``content`` of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(message, dict) for message in completion):
        return "".join(message.get("content") or "" for message in completion
                       if isinstance(message.get("content") or "", str))
    return None


@dataclass
class TokenRewardBatch:
    """The token-level rewards one reward function returned in one call (one process's samples).

    Attributes:
        function: the reward function's name.
        per_token: ``{sample index: float64 [L_i] tensor}``.
        steps: ``{sample index: [(character offset, value), ...]}``.
        completion_ids: the call's ``completion_ids`` (token ids per sample), for placing steps.
    """

    function: str
    per_token: dict[int, torch.Tensor] = field(default_factory=dict)
    steps: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    completion_ids: list | None = None


class TokenRewardRecorder:
    """Checks one call's token-level values sample by sample, returns their scalar sum, keeps them on the side.

    Args:
        function: the reward function's name (for messages).
        completion_ids: the call's ``completion_ids`` (list of token-id lists), or None.
        completions: the call's ``completions`` (strings or message lists).
    """

    def __init__(self, function: str, completion_ids: list | None, completions: list | None):
        self.batch = TokenRewardBatch(function, completion_ids=None if completion_ids is None else list(completion_ids))
        self.completions = completions
        self.problems: dict[int, str] = {}

    def _bad(self, index: int, kind: str, message: str) -> tuple[None, str]:
        self.problems[index] = message
        return None, kind

    def accept(self, index: int, value: Any) -> tuple[float | None, str | None]:
        """``(scalar for TRL, None)`` for good token-level ``value`` of sample ``index``, else ``(None, kind)``.

        The scalar is the sum of the token rewards (or of the step values). Kinds, as the guard counts them:
        ``"wrong_length"`` (a per-token list whose length is not the number of completion tokens),
        ``"non_number"`` (an element that is not a number / a malformed or out-of-range step),
        ``"non_finite"`` (NaN or ±inf); :attr:`problems` then holds the message for ``index``.
        """
        name = self.batch.function
        items = value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else list(value)
        if items and all(_is_pair(item) for item in items):
            return self._accept_steps(index, items)
        numbers_ = []
        for position, item in enumerate(items):
            number, kind = _number(item)  # issue 21 part 3: the guard's classification
            if kind is not None:
                return self._bad(index, kind, f"Reward function {name!r} returned a token reward that is not a finite "
                                              f"number at sample index {index}, token {position}: {_describe(item)}.")
            numbers_.append(number)
        if not items:  # an empty list: no step rewards
            self.batch.steps[index] = []
            return 0.0, None
        ids = self.batch.completion_ids
        if ids is not None and index < len(ids) and len(numbers_) != len(ids[index]):
            return self._bad(index, "wrong_length",
                             f"Reward function {name!r} returned {len(numbers_)} token rewards at sample index "
                             f"{index}, whose completion has {len(ids[index])} tokens (one reward per entry of "
                             f"completion_ids[{index}], or (character_offset, value) pairs).")
        rewards = torch.tensor(numbers_, dtype=torch.float64)
        total = float(rewards.sum())
        problem = _sum_problem(name, index, total)  # issue 21 part 3
        if problem is not None:
            return self._bad(index, "non_finite", problem)
        self.batch.per_token[index] = rewards
        return total, None

    def _accept_steps(self, index: int, items: list) -> tuple[float | None, str | None]:
        name = self.batch.function
        text = completion_text(self.completions[index]) if self.completions is not None else None
        steps = []
        for offset, raw in items:
            value, kind = _number(raw)  # issue 21 part 3: the guard's classification
            if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or kind is not None:
                kind = kind if isinstance(offset, (int, np.integer)) and not isinstance(offset, bool) else "non_number"
                return self._bad(index, kind, f"Reward function {name!r} returned a bad step reward at sample index "
                                              f"{index}: ({_describe(offset)}, {_describe(raw)}) (expected (int "
                                              f"character_offset, finite number)).")
            if text is not None and not 0 <= int(offset) < len(text):
                return self._bad(index, "non_number",
                                 f"Reward function {name!r} returned a step reward at character {int(offset)} for "
                                 f"sample index {index}, whose completion text has {len(text)} characters.")
            steps.append((int(offset), value))
        total = float(sum(value for _, value in steps))
        problem = _sum_problem(name, index, total)  # issue 21 part 3
        if problem is not None:
            return self._bad(index, "non_finite", problem)
        self.batch.steps[index] = steps
        return total, None

    def result(self) -> TokenRewardBatch | None:
        """The batch's token-level rewards, or None when no sample returned any."""
        return self.batch if (self.batch.per_token or self.batch.steps) else None


def token_char_spans(token_ids: list[int], tokenizer) -> list[tuple[int, int]]:
    """[start, end) character span of each token in ``tokenizer.decode(token_ids, skip_special_tokens=True)``.

    Tokens are decoded one by one; when their texts do not join to the whole text (a character split
    over several byte tokens, cleaned-up spaces), token k ends where the decoded prefix ``token_ids[:k+1]``
    ends if that prefix is a prefix of the text, else where token k − 1 ended: a character split over
    byte tokens belongs to the token that completes it; a special token has an empty span. That
    fallback decodes T prefixes (O(T²) characters).
    """
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    pieces = [tokenizer.decode([token], skip_special_tokens=True) for token in token_ids]
    if "".join(pieces) == text:
        ends = np.cumsum([len(piece) for piece in pieces]).tolist()
    else:
        ends, reached = [], 0
        for k in range(len(token_ids)):
            prefix = tokenizer.decode(token_ids[: k + 1], skip_special_tokens=True)
            if text.startswith(prefix):
                reached = max(reached, len(prefix))
            ends.append(reached)
    starts = [0] + ends[:-1]
    return list(zip(starts, ends))


def place_token_rewards(batch: TokenRewardBatch, num_rows: int, num_columns: int, tokenizer=None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[num_rows, num_columns] tensor of ``batch``'s token rewards (0 where none), column k = completion token k.

    Args:
        batch: one reward function's token-level rewards.
        num_rows: B, samples of the call.
        num_columns: T, width of the completion tensor (>= each completion's length).
        tokenizer: needed for step rewards (offsets → tokens, :func:`token_char_spans`).
        dtype: of the result.

    Raises:
        ValueError: a per-token list longer than ``num_columns``, a step on a character no token holds,
            or step rewards without a tokenizer or ``completion_ids`` (the message names the function and sample).
    """
    placed = torch.zeros(num_rows, num_columns, dtype=torch.float64)
    for index, rewards in batch.per_token.items():
        if rewards.numel() > num_columns:
            raise ValueError(f"Reward function {batch.function!r}: {rewards.numel()} token rewards at sample index "
                             f"{index} for {num_columns} completion columns.")
        placed[index, : rewards.numel()] = rewards
    for index, steps in batch.steps.items():
        if not steps:
            continue
        if tokenizer is None or batch.completion_ids is None:
            raise ValueError(f"Reward function {batch.function!r} returned step rewards at sample index {index}; "
                             f"placing them needs the tokenizer and completion_ids.")
        spans = token_char_spans(list(batch.completion_ids[index]), tokenizer)
        ends = torch.tensor([end for _, end in spans] or [0])
        for offset, value in steps:
            token = int(torch.searchsorted(ends, torch.tensor(offset), right=True))  # first token ending past offset
            if token >= len(spans) or token >= num_columns:
                raise ValueError(f"Reward function {batch.function!r}: the step reward at character {offset} of sample "
                                 f"index {index} lies past the completion's decoded text ({int(ends[-1])} characters).")
            placed[index, token] += value
    return placed.to(dtype)
