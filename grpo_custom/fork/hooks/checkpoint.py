"""Checkpoint hooks: save and restore grpo-custom's running state (task normalizer, stateful rewards)."""
from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

from grpo_custom.fork.hooks.rewards import _user_reward_function

STATE_FILE = "grpo_custom_state.json"


def save_checkpoint_state(trainer, trial) -> None:
    """Write grpo-custom's running state into the checkpoint folder (``grpo_custom_state.json``).

    The state: the task normalizer's running statistics, and ``state_dict()`` of every reward function
    that keeps running state (e.g. ``RewardModelReward(normalize="running")``), by reward name.
    """
    extras = getattr(trainer, "grpo_custom", None)
    stateful = _stateful_reward_functions(trainer)
    if extras is None or (extras.task_normalizer is None and not stateful) or not trainer.args.should_save:
        return
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    state = {
        "task_normalizer": None if extras.task_normalizer is None else extras.task_normalizer.state_dict(),
        "reward_functions": {name: func.state_dict() for name, func in stateful.items()},
    }
    with open(os.path.join(folder, STATE_FILE), "w") as handle:
        json.dump(state, handle)


def load_checkpoint_state(trainer, checkpoint) -> None:
    """Restore what :func:`save_checkpoint_state` wrote, when resuming from ``checkpoint``."""
    extras = getattr(trainer, "grpo_custom", None)
    stateful = _stateful_reward_functions(trainer)
    if extras is None or (extras.task_normalizer is None and not stateful) or checkpoint is None:
        return
    path = os.path.join(checkpoint, STATE_FILE)
    holders = [f"reward function {name!r}" for name in stateful]
    if extras.task_normalizer is not None:
        holders.insert(0, f"task_normalization={extras.task_normalizer.mode!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Resuming from {checkpoint} with {', '.join(holders)}, but the checkpoint has no {STATE_FILE}: "
            "their running statistics would be lost."
        )
    with open(path) as handle:
        state = json.load(handle)
    if extras.task_normalizer is not None:
        if state.get("task_normalizer") is None:
            raise ValueError(f"{path} holds no task normalizer state, but task_normalization is set.")
        extras.task_normalizer.load_state_dict(state["task_normalizer"])
    saved_rewards = state.get("reward_functions", {})
    for name, func in stateful.items():
        if name not in saved_rewards:
            raise ValueError(f"{path} holds no state for reward function {name!r}; saved: {sorted(saved_rewards)}.")
        func.load_state_dict(saved_rewards[name])


def _stateful_reward_functions(trainer) -> dict[str, Any]:
    """The user's reward functions that keep running state (``state_dict``/``load_state_dict``), by name.

    Model rewards (``nn.Module``) are excluded: their ``state_dict`` is weights, not running statistics.
    """
    stateful = {}
    for func, name in zip(getattr(trainer, "reward_funcs", []), getattr(trainer, "reward_func_names", [])):
        inner = _user_reward_function(func)
        if isinstance(inner, nn.Module):
            continue
        if callable(getattr(inner, "state_dict", None)) and callable(getattr(inner, "load_state_dict", None)):
            stateful[name] = inner
    return stateful

