"""Checks run once when the first batch is scored: coefficient schedules over the run, tasks, column names."""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

STEP_CONTEXT_KEYS = ("step", "progress", "stage")


def validate_at_start(trainer, inputs: list[dict]) -> None:
    """Fail (or warn) at the start of training instead of at step N. Runs before any update, when
    ``state.max_steps`` is known:

    - every regularizer coefficient schedule is evaluated at each step ``0 .. max_steps - 1``: a value that is
      negative, non-finite or not a number raises ``ValueError`` naming the regularizer and the first bad step;
    - with ``task_rewards`` as a dict, a task that no row of the train dataset has is warned about (its reward
      functions would never score a completion); an iterable dataset is not read ahead;
    - a dataset column named ``step``, ``progress`` or ``stage`` is warned about: reward functions receive the
      column's values, not grpo-custom's step context of that name.
    """
    extras = trainer.grpo_custom
    max_steps = int(trainer.state.max_steps or 0)
    for spec in extras.regularizers:
        if callable(spec.coef):
            for step in range(max_steps):
                spec.coef_at(step)  # raises ValueError naming the regularizer and the step
    args = trainer.args
    task_rewards = getattr(args, "task_rewards", None)
    if isinstance(task_rewards, dict) and trainer.train_dataset is not None:
        from grpo_custom.rewards.tasks.audit import _read_task_labels

        try:
            labels = set(_read_task_labels(trainer.train_dataset, args.task_column, "task_rewards"))
        except TypeError:  # an iterable dataset: its tasks are not known before it is read
            labels = None
        missing = sorted(task for task in task_rewards if labels is not None and task not in labels)
        if missing:
            logger.warning(
                "task_rewards names task(s) %s that no row of the train dataset has (column %r holds %s): "
                "their reward functions will never score a completion.",
                missing, args.task_column, sorted(label for label in labels if label is not None),
            )
    shadowed = [key for key in STEP_CONTEXT_KEYS if inputs and key in inputs[0]]
    if shadowed:
        logger.warning(
            "The dataset has column(s) %s: reward functions receive the column's values under that name, not "
            "grpo-custom's step context (read trainer_state.global_step, or rename the column).", shadowed,
        )
