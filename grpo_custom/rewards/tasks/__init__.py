"""Multi-task reward plumbing: routing, per-task normalization, per-task metrics, auditing, balanced sampling.

A multi-task GRPO dataset carries a task label per prompt (a column, ``"task"`` by default). This module
gives the trainer what it needs to treat tasks separately while keeping TRL's data layout
(N = num_prompts × G completions, group ``i // G``):

- :func:`route_rewards` turns ``{task: [reward functions]}`` (or a routing callable) into a flat list of
  TRL reward functions. Each scores only the completions of its own task(s) and returns ``None`` for the
  others, which TRL turns into NaN and leaves out of its NaN-aware weighted sum.
- :class:`TaskNormalizer` rescales the summed rewards per task (within groups, or with running
  per-task statistics) right before the advantage estimator.
- :func:`task_metrics` gives per-task reward/advantage/length statistics for the trainer's metrics.
- :func:`audit_tasks` reports the task mix of a dataset (counts, shares, imbalance, warnings).
- :class:`TaskBalancedSampler` draws prompts so every task is equally frequent, with the exact index
  layout of TRL's ``RepeatSampler`` (each prompt repeated G times consecutively).

One module per job: :mod:`.routing`, :mod:`.moments`, :mod:`.normalization`, :mod:`.metrics`,
:mod:`.audit`, :mod:`.sampler`.
"""
from .audit import TaskAudit, audit_tasks
from .metrics import task_metrics
from .moments import RunningMoments
from .normalization import TaskNormalizer
from .routing import RoutedRewardFunction, TaskRoutingError, route_rewards
from .sampler import TaskBalancedSampler

__all__ = [
    "RoutedRewardFunction",
    "RunningMoments",
    "TaskAudit",
    "TaskBalancedSampler",
    "TaskNormalizer",
    "TaskRoutingError",
    "audit_tasks",
    "route_rewards",
    "task_metrics",
]
