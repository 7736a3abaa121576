"""Curves and run facts from a trainer's ``state.log_history``, and the one number per run that summaries use.

Training logs and evaluation logs have their own logging steps: ``steps["train"]`` lists the global step of every
training log, ``steps["eval"]`` of every evaluation log, and each curve has one value per logging step of its kind
(evaluation metrics are the ``eval_*`` names), ``None`` where that log lacked the metric or it was not finite.
"""
from __future__ import annotations

import math

# Keys of the log entries that are not metrics, and those of the summary entry written when training ends.
NOT_METRICS = {"step", "epoch"}
TRAINING_SUMMARY = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}
DEFAULT_SUMMARY_FRACTION = 0.25


def kind_of(metric: str) -> str:
    """``"eval"`` for evaluation metrics (TRL/transformers prefix them ``eval_``), else ``"train"``."""
    return "eval" if metric.startswith("eval_") else "train"


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def curves_from_log_history(log_history: list[dict]) -> tuple[dict[str, list], dict[str, list[int]], dict]:
    """``(curves, steps, training_summary)`` from ``trainer.state.log_history``.

    ``curves[metric]`` has ``len(steps[kind_of(metric)])`` values; ``training_summary`` holds the numbers of the
    final entry (``train_runtime``, ``train_loss``, ...).
    """
    entries = {"train": [], "eval": []}
    summary = {}
    for entry in log_history:
        if TRAINING_SUMMARY & set(entry):
            summary.update({key: _number(value) for key, value in entry.items() if key in TRAINING_SUMMARY})
            continue
        kind = "eval" if any(key.startswith("eval_") for key in entry) else "train"
        entries[kind].append(entry)
    steps = {kind: [int(entry.get("step", index + 1)) for index, entry in enumerate(found)]
             for kind, found in entries.items()}
    curves = {}
    for kind, found in entries.items():
        names = sorted({key for entry in found for key, value in entry.items()
                        if key not in NOT_METRICS and kind_of(key) == kind and _number(value) is not None})
        for name in names:
            curves[name] = [_number(entry.get(name)) for entry in found]
    return curves, steps, summary


def run_value(curve: list, fraction: float = DEFAULT_SUMMARY_FRACTION) -> float | None:
    """The one number a run contributes to a summary: the mean of the last ``ceil(fraction · n)`` (at least one)
    logged values of ``curve``, missing values (None) left out; None when the curve has no value.

    Example: ``run_value([1, 2, 3, 4, 5, 6, 7, 8], 0.25)`` = mean(7, 8) = 7.5.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"summary fraction must be in (0, 1], got {fraction}")
    values = [value for value in curve if value is not None]
    if not values:
        return None
    window = values[-max(1, math.ceil(fraction * len(values))):]
    return sum(window) / len(window)
