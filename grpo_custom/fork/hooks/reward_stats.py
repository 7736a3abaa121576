"""Each reward function's distribution: per-step quantiles beside TRL's mean/std, a per-stage summary written to the
output directory, and histograms for TensorBoard / W&B when ``report_to`` has them.

Quantiles are ``torch.quantile`` with linear interpolation (numpy's default): for sorted values ``x_0..x_{n−1}``,
``q(p) = x_i + (x_{i+1} − x_i)·f`` with ``i + f = p·(n − 1)``. Scores are read through the guard's classification
(:func:`grpo_custom.rewards.guard.classify_reward_tensor`, NaN = unscored): NaN (``None`` from a reward function,
another task's sample) and ±inf (e.g. a plain ``nn.Module`` reward model's overflowed logit) are unscored, left out of
the quantiles and summaries and counted in a stage's ``nan_count``; a function with no score in the batch logs no
quantile.
"""
from __future__ import annotations

import json
import math
import os

import torch

from grpo_custom.fork.hooks.metrics import _log

QUANTILES = (("q10", 0.1), ("q50", 0.5), ("q90", 0.9))
SUMMARY_FOLDER = "reward_stages"


def record_reward_distribution(trainer, mode: str, rewards_per_func: torch.Tensor) -> None:
    """Log ``rewards/<function>/q10|q50|q90`` for the (gathered) batch ``rewards_per_func`` [N, F]; in training also
    add the scores to the current reward stage's summary and send histograms to TensorBoard / W&B."""
    from grpo_custom.rewards.guard import classify_reward_tensor

    values, _ = classify_reward_tensor(rewards_per_func.detach().cpu(), nan_means_unscored=True)  # [N, F], NaN = unscored
    probabilities = torch.tensor([p for _, p in QUANTILES], dtype=torch.float64)
    columns = {}
    for index, name in enumerate(trainer.reward_func_names):
        column = values[:, index]
        column = column[~torch.isnan(column)]  # [n scored]
        columns[name] = column
        if column.numel():
            for (key, _), value in zip(QUANTILES, torch.quantile(column, probabilities).tolist()):
                _log(trainer, mode, f"rewards/{name}/{key}", value)
    if mode != "train":
        return
    _send_histograms(trainer, columns, int(trainer.state.global_step) + 1)
    extras = trainer.grpo_custom
    stage = extras.step_context.get("stage")
    if stage is None:
        return
    current = extras.stage_rewards
    if current is not None and current["stage"] != stage:
        write_stage_summary(trainer, final=False, end=extras.curriculum.start_of(stage))
        current = None
    if current is None:
        names = [item.name for item in extras.reward_schedule.stages]
        current = extras.stage_rewards = {"stage": stage, "index": names.index(stage),
                                          "start": extras.curriculum.start_of(stage), "batches": 0,
                                          "values": {name: [] for name in trainer.reward_func_names}}
    current["batches"] += 1
    for name, column in columns.items():
        current["values"].setdefault(name, []).extend(column.tolist())
    current["nan_counts"] = {name: current.get("nan_counts", {}).get(name, 0)
                             + int(torch.isnan(values[:, index]).sum()) for index, name in
                             enumerate(trainer.reward_func_names)}


def summarize(values: list[float]) -> dict:
    """``count, mean, std`` (Bessel-corrected; 0 for one value), ``min, q10, q50, q90, max`` of ``values``."""
    if not values:
        return {"count": 0}
    tensor = torch.tensor(values, dtype=torch.float64)
    quantiles = torch.quantile(tensor, torch.tensor([p for _, p in QUANTILES], dtype=torch.float64)).tolist()
    std = tensor.std().item() if tensor.numel() > 1 else 0.0
    return {"count": len(values), "mean": tensor.mean().item(), "std": std, "min": tensor.min().item(),
            **{key: value for (key, _), value in zip(QUANTILES, quantiles)}, "max": tensor.max().item()}


def write_stage_summary(trainer, final: bool, end: int | None = None) -> str | None:
    """Write the current stage's summary to ``<output_dir>/reward_stages/<index>-<stage>.json`` (main process).

    The JSON: ``stage``, ``index``, ``start`` (its start step), ``end`` (the step the next stage started; None when
    written at the end of training with the stage still current), ``last_step``, ``batches`` (generated batches
    scored), and per reward function ``count`` (scored completions), ``nan_count``, ``mean``, ``std``, ``min``,
    ``q10``, ``q50``, ``q90``, ``max``. Returns the path (None when nothing was recorded or on other processes).
    """
    extras = getattr(trainer, "grpo_custom", None)
    current = None if extras is None else extras.stage_rewards
    if current is None:
        return None
    summary = {
        "stage": current["stage"], "index": current["index"], "start": current["start"], "end": end,
        "last_step": int(trainer.state.global_step), "batches": current["batches"], "ended": not final,
        "reward_functions": {name: {**summarize(values), "nan_count": current.get("nan_counts", {}).get(name, 0)}
                             for name, values in current["values"].items()},
    }
    if not trainer.args.should_save:
        return None
    folder = os.path.join(trainer.args.output_dir, SUMMARY_FOLDER)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{current['index']}-{current['stage']}.json")
    with open(path, "w") as handle:
        json.dump(summary, handle, indent=1, allow_nan=True)
    return path


def _send_histograms(trainer, columns: dict, step: int) -> None:
    """One histogram per reward function to TensorBoard (``train/rewards/<f>``) and W&B
    (``train/rewards/<f>/histogram``), when ``report_to`` put their callbacks on the trainer."""
    for callback in trainer.callback_handler.callbacks:
        writer = getattr(callback, "tb_writer", None)
        if writer is not None:
            for name, column in columns.items():
                if column.numel():
                    writer.add_histogram(f"train/rewards/{name}", column.numpy(), step)
        wandb = getattr(callback, "_wandb", None)
        if wandb is not None and getattr(callback, "_initialized", False) and getattr(wandb, "run", None) is not None:
            histograms = {f"train/rewards/{name}/histogram": wandb.Histogram(column.numpy())
                          for name, column in columns.items() if column.numel()}
            if histograms:
                wandb.log({**histograms, "train/global_step": step})


def stage_rewards_state(extras) -> dict | None:
    """The current stage's recorded scores for a checkpoint (JSON-ready, NaN-free)."""
    current = getattr(extras, "stage_rewards", None)
    if current is None:
        return None
    return {**current, "values": {name: [value for value in values if not math.isnan(value)]
                                  for name, values in current["values"].items()}}
