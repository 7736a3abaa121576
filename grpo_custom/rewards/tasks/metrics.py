"""Per-task reward, advantage and length statistics of one batch (``tasks/<task>/*`` metrics)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from trl.trainer.utils import nanstd

from grpo_custom.rewards.guard import classify_reward_tensor, classify_reward_value
from grpo_custom.rewards.tasks.normalization import _check_batch, _group_tasks


def _reward_vector(rewards: torch.Tensor | Sequence) -> torch.Tensor:
    """[N] float64 rewards through the guard's classification: NaN for every value that is not a good number
    (``None``, NaN, ±inf, ``10**400``, a string), so the NaN-aware statistics leave it out."""
    if isinstance(rewards, torch.Tensor):
        return classify_reward_tensor(rewards.detach().cpu(), nan_means_unscored=True)[0]
    numbers = [classify_reward_value(value)[0] for value in rewards]
    return torch.tensor([math.nan if number is None else number for number in numbers], dtype=torch.float64)


def task_metrics(
    tasks: Sequence[str],
    rewards: torch.Tensor | Sequence[float],
    advantages: torch.Tensor | Sequence[float],
    num_generations: int,
    completion_lengths: torch.Tensor | Sequence[float],
) -> dict[str, float]:
    """Per-task statistics of one batch, keyed ``tasks/<task>/<metric>``.

    For each task t (first-seen order), over its completions:
    ``reward_mean`` = nanmean r; ``reward_std`` = nanstd r (Bessel, TRL's ``nanstd``);
    ``frac_reward_zero_std`` = share of t's groups with ``torch.isclose(nanstd(group), 0)`` (TRL's test;
    every group counts as zero-std when G = 1, as in TRL); ``advantage_mean`` = mean advantage;
    ``count`` = number of completions; ``completion_length`` = mean completion length.

    Args:
        tasks: one task label per completion, [N].
        rewards: summed rewards [N] (NaN or None for unscorable completions; a value the guard classifies as bad,
            e.g. ±inf, counts as unscored).
        advantages: advantages [N].
        num_generations: G; groups are consecutive blocks of G and must share a task.
        completion_lengths: completion lengths in tokens [N].
    """
    rewards = _reward_vector(rewards)
    advantages = torch.as_tensor(advantages, dtype=torch.float64).detach().cpu()
    lengths = torch.as_tensor(completion_lengths, dtype=torch.float64).detach().cpu()
    _check_batch(rewards, tasks, num_generations, "task_metrics")
    for name, values in (("advantages", advantages), ("completion_lengths", lengths)):
        if values.shape != rewards.shape:
            raise ValueError(f"task_metrics: {name} has shape {tuple(values.shape)}, rewards {tuple(rewards.shape)}.")
    group_tasks = _group_tasks(tasks, num_generations, "task_metrics")
    if num_generations > 1:
        group_std = nanstd(rewards.view(-1, num_generations), dim=1)  # [num_prompts]
    else:
        group_std = torch.zeros(len(group_tasks), dtype=torch.float64)
    group_zero_std = torch.isclose(group_std, torch.zeros_like(group_std))  # [num_prompts]

    metrics: dict[str, float] = {}
    for task in dict.fromkeys(tasks):
        mask = torch.tensor([label == task for label in tasks])  # [N]
        groups = torch.tensor([label == task for label in group_tasks])  # [num_prompts]
        prefix = f"tasks/{task}/"
        metrics[prefix + "reward_mean"] = torch.nanmean(rewards[mask]).item()
        metrics[prefix + "reward_std"] = nanstd(rewards[mask]).item()
        metrics[prefix + "frac_reward_zero_std"] = group_zero_std[groups].double().mean().item()
        metrics[prefix + "advantage_mean"] = advantages[mask].mean().item()
        metrics[prefix + "count"] = float(mask.sum().item())
        metrics[prefix + "completion_length"] = lengths[mask].mean().item()
    return metrics

