"""Reward health judged from real completions: per-function metrics and the constancy evidence.

:func:`reward_health_metrics` computes, per reward function, the share of unscored completions, the share
of groups with no spread (TRL's ``frac_reward_zero_std`` test, per function) and the correlation with the
completion length. :class:`ConstancyEvidence` watches the first generation batches of a run and reports a
reward function that gave the same score to every completion of every group it scored (zero GRPO advantage
from it: no learning signal): a finding from the model's own completions, never from synthetic probes (a
probe misses a format reward's format; the model's completions are what the reward actually scores).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from grpo_custom.rewards.guard import classify_reward_tensor, classify_reward_value

EVIDENCE_BATCHES = 4  # generation batches watched before judging constancy


def _as_float_array(values: Any) -> np.ndarray:
    """A float64 numpy vector from a list (None → NaN), numpy array or tensor."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64).cpu().numpy().reshape(-1)
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _reward_array(values: Any) -> np.ndarray:
    """Rewards as a float64 numpy vector through the guard's classification: NaN for every value that is not a
    good number (``None``, NaN, ±inf, ``10**400``, a string), so the statistics leave it out."""
    if isinstance(values, torch.Tensor):
        return classify_reward_tensor(values.reshape(-1), nan_means_unscored=True)[0].cpu().numpy()
    numbers = [classify_reward_value(value)[0] for value in values]
    return np.array([math.nan if number is None else number for number in numbers], dtype=np.float64)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two equal-length float vectors; NaN for fewer than 2 points or zero variance."""
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum()) / denominator if denominator > 0 else math.nan


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, tied values sharing the mean of their ranks (as Spearman needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks; NaN when undefined."""
    x_array, y_array = _as_float_array(x), _as_float_array(y)
    return _pearson(_average_ranks(x_array), _average_ranks(y_array))


def reward_length_correlation(rewards: Any, lengths: Any) -> float:
    """Pearson correlation between rewards and completion lengths, ignoring NaN / None pairs.

    ``corr = Σ(r - r̄)(ℓ - ℓ̄) / sqrt(Σ(r - r̄)² Σ(ℓ - ℓ̄)²)`` over the pairs where both are finite.

    Args:
        rewards: ``[N]`` rewards (list with None allowed, numpy array or tensor); each goes through the guard's
            classification (:func:`~grpo_custom.rewards.guard.classify_reward_value`): a bad value is left out.
        lengths: ``[N]`` completion lengths.

    Returns:
        The correlation, or NaN with fewer than two finite pairs or a constant side.
    """
    reward_array, length_array = _reward_array(rewards), _as_float_array(lengths)
    if reward_array.shape != length_array.shape:
        raise ValueError(
            f"reward_length_correlation needs as many rewards as lengths, got {reward_array.size} and "
            f"{length_array.size}."
        )
    finite = np.isfinite(reward_array) & np.isfinite(length_array)
    return _pearson(reward_array[finite], length_array[finite])


def reward_health_metrics(rewards_per_func: torch.Tensor, lengths: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per reward function, vectorized over functions: [3, F] = (nan_rate, frac_zero_std, length_corr).

    Values go through the guard's classification first (:func:`classify_reward_tensor`, NaN = unscored): a
    ±inf (e.g. from a model reward, which no guard wraps) counts as unscored, like a bad value under
    ``reward_errors="nan"``, instead of turning its group's std into NaN.

    - nan_rate: share of the N completions the function did not score (NaN or ±inf);
    - frac_zero_std: among the groups (consecutive blocks of G) it scored at least once, the share whose
      scores have zero std (TRL's ``isclose(nanstd, 0)``, one score counting as zero std); NaN when it
      scored no group or G = 1;
    - length_corr: Pearson correlation of its scores with ``lengths`` over the scored completions; NaN
      when undefined (fewer than two scores, or a constant side).

    Args:
        rewards_per_func: [N, F] rewards, NaN where unscored.
        lengths: [N] completion lengths.
        num_generations: G.
    """
    from trl.trainer.utils import nanstd

    values, _ = classify_reward_tensor(rewards_per_func, nan_means_unscored=True)  # [N, F] float64
    scored = ~torch.isnan(values)  # [N, F]
    nan_rate = 1.0 - scored.to(torch.float64).mean(dim=0)  # [F]
    if num_generations > 1:
        grouped = values.view(-1, num_generations, values.shape[1])  # [P, G, F]
        group_scored = scored.view(-1, num_generations, values.shape[1]).any(dim=1)  # [P, F]
        std = torch.nan_to_num(nanstd(grouped, dim=1), nan=0.0)  # [P, F]
        zero = torch.isclose(std, torch.zeros_like(std)) & group_scored
        frac_zero_std = zero.sum(0) / group_scored.sum(0)  # [F], NaN when no group was scored
    else:
        frac_zero_std = torch.full_like(nan_rate, math.nan)
    length = lengths.to(torch.float64).unsqueeze(1).expand_as(values)  # [N, F]
    count = scored.sum(0)  # [F]
    weight = scored.to(torch.float64)
    mean_r = torch.nan_to_num(values).mul(weight).sum(0) / count  # [F]
    mean_l = (length * weight).sum(0) / count
    dr = (torch.nan_to_num(values) - mean_r) * weight  # [N, F]
    dl = (length - mean_l) * weight
    denominator = torch.sqrt((dr * dr).sum(0) * (dl * dl).sum(0))
    correlation = torch.where((count >= 2) & (denominator > 0), (dr * dl).sum(0) / denominator,
                              torch.full_like(denominator, math.nan))
    return torch.stack([nan_rate, frac_zero_std, correlation])


@dataclass
class ConstancyFinding:
    """One reward function's constancy over the watched batches (see :class:`ConstancyEvidence`).

    Attributes:
        name: the reward function's name.
        kind: ``"same_value"`` (one value for every scored completion), ``"prompt_only"`` (a value per group,
            none within it) or ``"never_scored"`` (``None`` for every completion).
        batches: generation batches watched.
        groups: groups the function scored in them.
        low, high: smallest and largest score seen (NaN when never scored).
        message: the warning, with the numbers and what to check.
    """

    name: str
    kind: str
    batches: int
    groups: int
    low: float
    high: float
    message: str


class ConstancyEvidence:
    """Watch the first ``batches`` generation batches of real completions; report rewards without spread.

    Per reward function f, over each batch's ``[N, F]`` rewards (groups of G consecutive completions) and the
    per-function ``frac_zero_std`` the trainer logs (``reward_health/<f>/frac_zero_std``, from
    :func:`reward_health_metrics`: TRL's ``frac_reward_zero_std`` test for f alone): f is *constant* when, in
    every watched batch in which it scored a group, ``frac_zero_std == 1`` (every group's scores have zero std,
    so f contributes zero to every advantage). Judged once, at the ``batches``-th :meth:`update`.

    Args:
        names: the reward function names, in ``rewards_per_func`` column order.
        batches: generation batches to watch (>= 1).
        routed: names of task-routed functions (``None`` for other tasks' samples by design): never reported
            as ``"never_scored"``, since their task may be absent from the watched batches.
    """

    def __init__(self, names: Sequence[str], batches: int = EVIDENCE_BATCHES, routed: Sequence[str] = ()):
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ValueError(f"ConstancyEvidence batches must be an int >= 1, got {batches!r}.")
        self.names = list(names)
        self.batches = batches
        self.routed = set(routed)
        self.seen = 0
        self.groups = [0] * len(self.names)
        self.spread = [False] * len(self.names)  # some group of f had a non-zero std
        self.low = [math.inf] * len(self.names)
        self.high = [-math.inf] * len(self.names)

    @property
    def done(self) -> bool:
        """Whether the watched batches are all in (later updates are ignored)."""
        return self.seen >= self.batches

    def update(self, rewards_per_func: torch.Tensor, frac_zero_std: Sequence[float], num_generations: int
               ) -> list[ConstancyFinding]:
        """Add one generation batch; returns the findings at the ``batches``-th call, ``[]`` otherwise.

        Args:
            rewards_per_func: [N, F] rewards of the batch (NaN where unscored), N a multiple of G.
            frac_zero_std: [F] per-function share of zero-std groups (NaN when f scored no group).
            num_generations: G.
        """
        if self.done:
            return []
        if rewards_per_func.dim() != 2 or rewards_per_func.shape[1] != len(self.names):
            raise ValueError(f"ConstancyEvidence.update: rewards_per_func has shape {tuple(rewards_per_func.shape)}, "
                             f"expected [N, {len(self.names)}] (one column per reward function {self.names}).")
        values, _ = classify_reward_tensor(rewards_per_func, nan_means_unscored=True)  # [N, F]
        scored_groups = (~torch.isnan(values)).view(-1, num_generations, len(self.names)).any(dim=1).sum(0)  # [F]
        low = torch.where(torch.isnan(values), math.inf, values).min(dim=0).values.tolist()  # [F]
        high = torch.where(torch.isnan(values), -math.inf, values).max(dim=0).values.tolist()
        for index, (groups, fraction) in enumerate(zip(scored_groups.tolist(), frac_zero_std)):
            self.groups[index] += int(groups)
            self.low[index] = min(self.low[index], low[index])
            self.high[index] = max(self.high[index], high[index])
            if groups and not math.isnan(fraction) and fraction < 1.0:
                self.spread[index] = True
        self.seen += 1
        return self.findings() if self.done else []

    def findings(self) -> list[ConstancyFinding]:
        """The constant reward functions so far (see the class docstring), in column order."""
        found = []
        for index, name in enumerate(self.names):
            if self.spread[index] or (not self.groups[index] and name in self.routed):
                continue
            groups, low, high = self.groups[index], self.low[index], self.high[index]
            where = f"in the first {self.seen} generation batches"
            if not groups:
                kind, low, high = "never_scored", math.nan, math.nan
                message = (f"reward function {name!r} scored no completion (None for every one) {where}: it gives "
                           "no learning signal; check its inputs (dataset columns) and what it parses.")
            elif low == high:
                kind = "same_value"
                message = _same_value_message([name], low, groups, where) + " " + SPARSE_REWARD_ADVICE
            else:
                kind = "prompt_only"
                message = (f"reward function {name!r} gave every completion of a group the same score {where} "
                           f"({groups} groups, values {low:.6g} to {high:.6g} across groups, frac_zero_std 1 in "
                           "each): it depends on the prompt, not on the completion, and gives no learning signal.")
            found.append(ConstancyFinding(name, kind, self.seen, groups, low, high, message))
        return found


def _same_value_message(names: Sequence[str], value: float, groups: int, where: str) -> str:
    """The warning for reward functions that returned ``value`` for every completion they scored."""
    quoted = ", ".join(repr(name) for name in names)
    subject, verb, its = ((f"reward function {quoted}", "it", "its") if len(names) == 1
                          else (f"reward functions {quoted}", "they", "their"))
    return (f"{subject} returned {value:.6g} for every completion {verb} scored {where} ({groups} groups, "
            f"frac_zero_std 1 in each): {its} advantages are zero, {verb} {'has' if len(names) == 1 else 'have'} "
            "given no learning signal so far.")


SPARSE_REWARD_ADVICE = ("A sparse reward (a strict format, an exact answer) stays flat until the model first produces "
                        "what it rewards; one that never varies may read the wrong column or parse a format the model "
                        "does not produce.")


def constancy_warning(findings: Sequence[ConstancyFinding]) -> str:
    """One warning text for ``findings``, one short line per finding: functions with the same value over the same
    groups share one line, and the advice on sparse rewards comes once, as the last line (a run with several flat
    format rewards reads as a short list, not a repeated paragraph on one line)."""
    shared: dict[tuple, list[str]] = {}
    for finding in findings:
        if finding.kind == "same_value":
            shared.setdefault((finding.low, finding.groups, finding.batches), []).append(finding.name)
    parts, done = [], set()
    for finding in findings:
        if finding.kind != "same_value":
            parts.append(finding.message)
        elif finding.name not in done:
            names = shared[(finding.low, finding.groups, finding.batches)]
            done.update(names)
            parts.append(_same_value_message(names, finding.low, finding.groups,
                                             f"in the first {finding.batches} generation batches"))
    if done:
        parts.append(SPARSE_REWARD_ADVICE)
    return "\n".join(parts)
