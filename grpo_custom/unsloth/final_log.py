"""The final log entry under ``patch_unsloth()`` carries the averaged metrics stock TRL merges into it.

TRL's ``GRPOTrainer.log`` adds to each log entry the mean of every metric appended since the previous
entry (NaN values left out), then clears them; the entry written when training ends (the one with
``train_loss``, ``trainer.state.log_history[-1]``) so holds the metrics of the steps after the last
logged one: with TRL's default ``logging_steps=10`` and a short run, all of them. Unsloth's config
rewrites ``logging_steps`` to 1 when the user did not set it, so there every step is logged and the
final entry holds no metric (no ``reward``, ``rewards/<fn>/mean``, ``policy_loss``, ``entropy_coef``).

:func:`make_trl_window_log` wraps the compiled trainer's ``log``: when the config's logging schedule
differs from the one the user's arguments give under TRL (the requested config the patch records,
:data:`grpo_custom.fork.effective_config.REQUESTED_ATTRIBUTE`), it keeps every training metric value
since the last step at which TRL's schedule would have logged (asked from transformers'
``DefaultFlowCallback`` with the requested arguments) and merges their TRL-style averages into the
final entry (a metric the trainer sets rather than appends, such as the running total ``num_tokens``,
merges its latest value, as TRL's entry holds it). The per-step entries Unsloth's schedule writes are
unchanged. Only the ``"steps"`` logging strategy is followed; any other requested strategy leaves
``log`` as it is.
tests/unsloth/test_adaptive_entropy.py compares the final entry with stock TRL's on the same run.
"""
from __future__ import annotations

import functools
import inspect
import math
import re
import sys

from grpo_custom.fork.effective_config import REQUESTED_ATTRIBUTE

WINDOW_ATTRIBUTE = "_grpo_custom_trl_log_window"
_SCHEDULE = ("logging_strategy", "logging_steps", "logging_first_step")


def requested_schedule(args):
    """The TRL config of the user's arguments (recorded by the patch; the ``reference`` of a
    :class:`~grpo_custom.unsloth.requested_config.RequestedConfig`) when its ``"steps"`` logging schedule differs
    from the running one, else None (also where TRL refused the arguments and there is no reference)."""
    record = getattr(args, REQUESTED_ATTRIBUTE, None)
    requested = getattr(record, "reference", record)
    if requested is None or all(getattr(requested, name) == getattr(args, name) for name in _SCHEDULE):
        return None
    if str(getattr(requested.logging_strategy, "value", requested.logging_strategy)) != "steps":
        return None
    return requested


def trl_would_log(requested, state) -> bool:
    """Whether a trainer with the ``requested`` arguments logs at the end of ``state.global_step``
    (transformers' ``DefaultFlowCallback.on_step_end`` on a state with the requested logging steps)."""
    from transformers.trainer_callback import DefaultFlowCallback, TrainerControl, TrainerState

    shadow = TrainerState(global_step=state.global_step, max_steps=state.max_steps)
    shadow.compute_steps(requested, state.max_steps)
    control = TrainerControl()
    DefaultFlowCallback().on_step_end(requested, shadow, control)
    return bool(control.should_log)


@functools.lru_cache(maxsize=None)
def assigned_metrics(module_name: str) -> frozenset:
    """Metric names the generated trainer module sets (``self._metrics[mode]["name"] = [value]``) instead of
    appending to: read from its source, so the answer follows the installed TRL."""
    source = inspect.getsource(sys.modules[module_name])
    return frozenset(re.findall(r'_metrics\[mode\]\["([^"]+)"\]\s*=\s*\[', source))


def trl_average(values: list) -> float | None:
    """TRL's average of a metric's values: the mean of the non-NaN ones, None when none is left."""
    valid = [value for value in values if not math.isnan(value)]
    return sum(valid) / len(valid) if valid else None


def make_trl_window_log(original):
    """The trainer's ``log`` whose final training entry also gets TRL's averages (see the module docstring)."""

    def log(self, logs, start_time=None):
        requested = requested_schedule(self.args)
        if requested is None or not self.model.training:
            return original(self, logs, start_time)
        window = self.__dict__.setdefault(WINDOW_ATTRIBUTE, {})
        current = self._metrics["train"]
        for key, values in current.items():
            window.setdefault(key, []).extend(values)
        if "train_loss" not in logs:
            result = original(self, logs, start_time)
            if trl_would_log(requested, self.state):
                window.clear()
            return result
        latest = assigned_metrics(original.__module__)
        merged = {key: values[-1] if key in latest else trl_average(values)
                  for key, values in window.items() if key not in logs and values}
        window.clear()
        current.clear()  # already in ``merged``: TRL's log would overwrite those averages with these alone
        return original(self, {**logs, **merged}, start_time)

    log.grpo_custom_original = original
    return log
