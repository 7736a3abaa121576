"""What the hooks log: values appended to the trainer's ``_metrics`` (regularizers, advantages, reward health)."""
from __future__ import annotations

import torch

from grpo_custom.algorithms.regularizers import RegularizerSpec


def _mode(trainer) -> str:
    return "train" if trainer.model.training else "eval"


def _log(trainer, mode: str, name: str, value: float) -> None:
    trainer._metrics[mode][name].append(float(value))


def _over_processes(trainer, values: list[float], reduction: str = "mean") -> list[float]:
    """``values`` (the same keys on every process) reduced over processes, the mean or the sum; one gather."""
    if trainer.accelerator.num_processes == 1 or not values:
        return list(values)
    local = torch.tensor(values, dtype=torch.float64, device=trainer.accelerator.device).unsqueeze(0)  # [1, K]
    gathered = trainer.accelerator.gather(local)  # [P, K]
    return (gathered.mean(0) if reduction == "mean" else gathered.sum(0)).tolist()


def _log_regularizer(trainer, mode: str, spec: RegularizerSpec, coef: float, metrics: dict) -> None:
    """Log ``regularizers/<label>/coef`` and ``regularizers/<label>/<key>`` for every metric.

    Each metric is the mean over processes of its per-process value (as TRL logs its ``kl``): the global
    batch's value for the built-in metrics, means over equal-sized per-process batches.
    """
    _log(trainer, mode, f"{spec.metric_prefix}/coef", coef)
    keys = list(metrics)
    for key, value in zip(keys, _over_processes(trainer, [float(metrics[key]) for key in keys])):
        _log(trainer, mode, f"{spec.metric_prefix}/{key}", value)


def _log_reward_error_counts(trainer, mode: str) -> None:
    """``reward_errors/<reward>/<kind>``: bad values the guards replaced in this batch, summed over processes,
    for every kind of each reward function that had a problem on some process."""
    from grpo_custom.rewards.guard import BAD_KINDS

    extras = trainer.grpo_custom
    keys = [f"reward_errors/{name}/{kind}" for name in trainer.reward_func_names for kind in BAD_KINDS]
    local = [extras.pending_metrics.get(key, 0.0) for key in keys] + [float(key in extras.pending_metrics) for key in keys]
    totals = _over_processes(trainer, local, reduction="sum")
    for key, total, recorded in zip(keys, totals[: len(keys)], totals[len(keys):]):
        if recorded:
            _log(trainer, mode, key, total)
    extras.pending_metrics.clear()


def _log_advantage_metrics(trainer, mode: str, advantages: torch.Tensor, mask: torch.Tensor,
                           prefix: str = "advantages") -> None:
    values = advantages if advantages.dim() == 1 else advantages[mask.bool()]
    if values.numel() == 0:
        mean = std = abs_max = 0.0
    else:
        spread = values.std() if values.numel() > 1 else values.new_zeros(())
        mean, std, abs_max = torch.stack([values.mean(), spread, values.abs().max()]).tolist()  # one sync
    _log(trainer, mode, f"{prefix}/mean", mean)
    _log(trainer, mode, f"{prefix}/std", std)
    _log(trainer, mode, f"{prefix}/abs_max", abs_max)


def _log_reward_health(trainer, mode: str, rewards_per_func, num_generations: int, lengths) -> None:
    """Per reward function ``f`` (column r of ``rewards_per_func`` [N, F]):

    - ``reward_health/<f>/nan_rate``: share of the N completions with r = NaN (unscored: ``None``, a bad
      value under ``reward_errors="nan"``, or another task's sample for a task-routed function);
    - ``reward_health/<f>/frac_zero_std``: share of the groups f scored at least once whose scores have
      zero std (TRL's ``isclose(nanstd, 0)``; one score counts as zero std); not logged when f scored no
      group or G = 1;
    - ``reward_health/<f>/length_corr``: Pearson correlation of r with the completion lengths over the
      scored completions; not logged when undefined (fewer than two, or constant r or lengths).

    Values go through the guard's classification (a ±inf counts as unscored). The zero-std fractions also
    feed the constancy evidence (:func:`grpo_custom.fork.hooks.rewards.watch_reward_constancy`).
    """
    import math

    from grpo_custom.fork.hooks.rewards import watch_reward_constancy
    from grpo_custom.rewards.reward_health import reward_health_metrics

    table = reward_health_metrics(rewards_per_func, lengths, num_generations).tolist()  # [3, F], one sync
    for index, name in enumerate(trainer.reward_func_names):
        for metric, values in zip(("nan_rate", "frac_zero_std", "length_corr"), table):
            if not math.isnan(values[index]):
                _log(trainer, mode, f"reward_health/{name}/{metric}", values[index])
    watch_reward_constancy(trainer, mode, rewards_per_func, table[1], num_generations)

