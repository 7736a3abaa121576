"""Audit a dataset's task mix (counts, shares, imbalance, warnings) before multi-task training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def _read_task_labels(dataset: Any, task_column: str, who: str) -> list[str | None]:
    """Task labels of a ``datasets.Dataset`` or a list of dicts; ``None`` for a missing/None label."""
    if hasattr(dataset, "column_names") and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        if task_column not in dataset.column_names:
            raise ValueError(
                f"{who}: the dataset has no column {task_column!r}; columns: {list(dataset.column_names)}."
            )
        labels = list(dataset[task_column])
    elif isinstance(dataset, Sequence) and all(isinstance(row, Mapping) for row in dataset):
        if not any(task_column in row for row in dataset):
            keys = sorted(dataset[0]) if len(dataset) else []
            raise ValueError(f"{who}: no row has a {task_column!r} column; first row's keys: {keys}.")
        labels = [row.get(task_column) for row in dataset]
    else:
        raise TypeError(f"{who}: dataset must be a datasets.Dataset or a list of dicts, got {type(dataset).__name__}.")
    if not labels:
        raise ValueError(f"{who}: the dataset is empty.")
    for index, label in enumerate(labels):
        if label is not None and not isinstance(label, str):
            raise TypeError(
                f"{who}: row {index} has task label {label!r} ({type(label).__name__}); labels must be strings."
            )
    return labels


@dataclass
class TaskAudit:
    """The task mix of a dataset (see :func:`audit_tasks`).

    Attributes:
        counts: rows per task, largest first.
        shares: each task's share of the labelled rows.
        imbalance_ratio: largest count / smallest count.
        unlabelled: rows with a missing or ``None`` label.
        warnings: human-readable problems found.
    """

    counts: dict[str, int]
    shares: dict[str, float]
    imbalance_ratio: float
    unlabelled: int = 0
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        width = max([len("task")] + [len(task) for task in self.counts])
        lines = [f"{'task':<{width}}  {'count':>7}  {'share':>6}"]
        lines += [f"{task:<{width}}  {count:>7}  {self.shares[task]:>6.1%}" for task, count in self.counts.items()]
        lines.append(f"imbalance ratio (max/min count): {self.imbalance_ratio:.2f}")
        if self.unlabelled:
            lines.append(f"unlabelled rows: {self.unlabelled}")
        lines += [f"warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)


def audit_tasks(
    dataset: Any, task_column: str = "task", min_share: float = 0.05, max_imbalance: float = 10.0
) -> TaskAudit:
    """Count the tasks of a dataset and warn about a mix that per-task training handles badly.

    Warnings: a task with share < ``min_share`` of the labelled rows; imbalance ratio (max/min count)
    > ``max_imbalance``; rows with a missing or ``None`` label. A dataset without the column, an empty
    one, or one with no labelled row raises ``ValueError``.

    Args:
        dataset: a ``datasets.Dataset`` or a list of dicts.
        task_column: column holding the task label.
        min_share: smallest share before a warning.
        max_imbalance: largest imbalance ratio before a warning.
    """
    labels = _read_task_labels(dataset, task_column, "audit_tasks")
    unlabelled_rows = [index for index, label in enumerate(labels) if label is None]
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        raise ValueError(f"audit_tasks: no row has a {task_column!r} label.")
    counts = dict(sorted(counts.items(), key=lambda item: -item[1]))
    labelled = sum(counts.values())
    shares = {task: count / labelled for task, count in counts.items()}
    imbalance_ratio = max(counts.values()) / min(counts.values())

    warnings = [
        f"task {task!r} has {counts[task]} rows, {share:.1%} of the labelled rows (below {min_share:.1%})"
        for task, share in shares.items()
        if share < min_share
    ]
    if imbalance_ratio > max_imbalance:
        warnings.append(
            f"imbalance ratio {imbalance_ratio:.1f} (largest/smallest task count) exceeds {max_imbalance:g}"
        )
    if unlabelled_rows:
        warnings.append(
            f"{len(unlabelled_rows)} rows have no {task_column!r} label (missing or None), "
            f"e.g. rows {unlabelled_rows[:5]}"
        )
    return TaskAudit(counts, shares, imbalance_ratio, len(unlabelled_rows), warnings)

