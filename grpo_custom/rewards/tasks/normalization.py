"""Per-task reward normalization before the advantage estimator (:class:`TaskNormalizer`: within groups, or
with running per-task statistics), and the batch-layout checks it shares with the per-task metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from grpo_custom.rewards.tasks.moments import RunningMoments, _check_momentum


def _check_batch(rewards: torch.Tensor, tasks: Sequence[str], num_generations: int, who: str) -> None:
    """Shared input checks: rewards [N], one str task per completion, N divisible by G."""
    if not isinstance(rewards, torch.Tensor) or rewards.ndim != 1:
        raise ValueError(
            f"{who}: rewards must be a 1-D tensor [N], got {getattr(rewards, 'shape', type(rewards).__name__)}."
        )
    if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"{who}: num_generations must be a positive int, got {num_generations!r}.")
    if len(tasks) != rewards.numel():
        raise ValueError(f"{who}: got {len(tasks)} task labels for {rewards.numel()} rewards.")
    if rewards.numel() % num_generations != 0:
        raise ValueError(
            f"{who}: {rewards.numel()} rewards do not split into groups of num_generations={num_generations}."
        )
    for index, task in enumerate(tasks):
        if not isinstance(task, str):
            raise TypeError(f"{who}: sample {index} has task label {task!r}; labels must be strings.")


def _group_tasks(tasks: Sequence[str], num_generations: int, who: str) -> list[str]:
    """The task of each group of G consecutive completions; a group mixing tasks is an error."""
    group_tasks = []
    for group in range(len(tasks) // num_generations):
        labels = tasks[group * num_generations : (group + 1) * num_generations]
        if len(set(labels)) != 1:
            raise ValueError(f"{who}: group {group} mixes tasks {sorted(set(labels))}; a group must share one task.")
        group_tasks.append(labels[0])
    return group_tasks


def _nanstd_zero_below_two(values: torch.Tensor, dim: int) -> torch.Tensor:
    """NaN-ignoring Bessel std along ``dim`` (keepdim), 0 where fewer than two values are present."""
    present = ~torch.isnan(values)
    count = present.sum(dim=dim, keepdim=True)
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    squared = torch.where(present, (values - mean) ** 2, torch.zeros_like(values))
    variance = squared.sum(dim=dim, keepdim=True) / (count - 1).clamp(min=1)
    return torch.where(count > 1, variance.sqrt(), torch.zeros_like(variance))


class TaskNormalizer:
    """Per-task reward normalization, applied to the summed rewards right before the advantage estimator.

    - ``mode=None``: identity.
    - ``mode="group"``: r̂ = (r − nanmean_g) / (nanstd_g + eps) within each group g of G consecutive
      completions (Bessel std, 0 for a group with fewer than two non-NaN rewards); every group must
      hold one task, which is checked.
    - ``mode="running"``: r̂ = (r − μ_task) / (σ_task + eps) with per-task :class:`RunningMoments`
      (exact over all rewards seen, or exponential with ``momentum``), updated with this batch's
      rewards of the task first, then applied.

    NaN rewards are ignored by the statistics and stay NaN. Computed in float64, returned in the input
    dtype. :meth:`state_dict` / :meth:`load_state_dict` carry the running statistics (JSON-ready).

    Args:
        mode: ``None``, ``"group"`` or ``"running"``.
        momentum: EMA weight for ``"running"`` (``None``: exact statistics); not allowed otherwise.
        eps: added to the std.
    """

    MODES = (None, "group", "running")

    def __init__(self, mode: str | None = None, momentum: float | None = None, eps: float = 1e-4):
        if mode not in self.MODES:
            raise ValueError(f"TaskNormalizer: mode must be one of {list(self.MODES)}, got {mode!r}.")
        if momentum is not None and mode != "running":
            raise ValueError(f"TaskNormalizer: momentum applies to mode='running' only, got mode={mode!r}.")
        _check_momentum(momentum, "TaskNormalizer")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"TaskNormalizer: eps must be a positive finite number, got {eps!r}.")
        self.mode = mode
        self.momentum = None if momentum is None else float(momentum)
        self.eps = float(eps)
        self.moments: dict[str, RunningMoments] = {}

    def normalize(self, rewards: torch.Tensor, tasks: Sequence[str], num_generations: int) -> torch.Tensor:
        """Normalize ``rewards`` [N] (N = prompts × G, TRL layout) given one task label per completion."""
        _check_batch(rewards, tasks, num_generations, "TaskNormalizer.normalize")
        if self.mode is None:
            return rewards
        values = rewards.to(torch.float64)
        if self.mode == "group":
            _group_tasks(tasks, num_generations, "TaskNormalizer.normalize")
            grouped = values.view(-1, num_generations)  # [num_prompts, G]
            mean = torch.nanmean(grouped, dim=1, keepdim=True)  # [num_prompts, 1]
            normalized = (grouped - mean) / (_nanstd_zero_below_two(grouped, dim=1) + self.eps)
            return normalized.view(-1).to(rewards.dtype)
        normalized = values.clone()
        task_of = list(tasks)
        for task in dict.fromkeys(task_of):
            mask = torch.tensor([label == task for label in task_of], device=rewards.device)  # [N]
            moments = self.moments.setdefault(task, RunningMoments(self.momentum))
            moments.update(values[mask])
            normalized[mask] = (values[mask] - moments.mean) / (moments.std + self.eps)
        return normalized.to(rewards.dtype)

    def state_dict(self) -> dict:
        """JSON-serializable state: configuration and per-task running statistics."""
        return {
            "mode": self.mode,
            "momentum": self.momentum,
            "eps": self.eps,
            "tasks": {task: moments.state_dict() for task, moments in self.moments.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; mode, momentum and eps must match this instance."""
        for key in ("mode", "momentum", "eps"):
            if key not in state:
                raise ValueError(f"TaskNormalizer.load_state_dict: state has no {key!r}.")
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"TaskNormalizer.load_state_dict: state has {key}={state[key]!r}, this normalizer "
                    f"{key}={getattr(self, key)!r}."
                )
        moments = {}
        for task, task_state in state.get("tasks", {}).items():
            moments[task] = RunningMoments(self.momentum)
            moments[task].load_state_dict(task_state)
        self.moments = moments

