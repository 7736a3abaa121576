"""Checkpoint hooks: save (atomically) and restore grpo-custom's state: algorithm fingerprint, task normalizer,
stateful rewards, curriculum gates and the current reward stage's scores."""
from __future__ import annotations

import json
import logging
import os
from typing import Any

from torch import nn

from grpo_custom.fork.hooks.fingerprint import algorithm_fingerprint, check_fingerprint
from grpo_custom.fork.hooks.reward_stats import stage_rewards_state
from grpo_custom.fork.hooks.rewards import _user_reward_function
from grpo_custom.fork.hooks.value import load_value_state, save_value_state

logger = logging.getLogger(__name__)

STATE_FILE = "grpo_custom_state.json"


def save_checkpoint_state(trainer, trial) -> None:
    """Write grpo-custom's state into the checkpoint folder (``grpo_custom_state.json``), atomically.

    The state: the algorithm fingerprint (:func:`grpo_custom.fork.hooks.fingerprint.algorithm_fingerprint`),
    the task normalizer's running statistics, ``state_dict()`` of every reward function that keeps
    running state (e.g. ``RewardModelReward(normalize="running")``), by reward name, the curriculum gates'
    state (hits, opened steps; ``rewards.gates.CurriculumState``) and the current reward stage's scores. Written to a temporary
    file in the folder, then renamed over ``grpo_custom_state.json``: a crash leaves the old file or the new
    one, never part of one.
    """
    extras = getattr(trainer, "grpo_custom", None)
    if extras is None or not trainer.args.should_save:
        return
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    state = {
        "fingerprint": algorithm_fingerprint(trainer),
        "task_normalizer": None if extras.task_normalizer is None else extras.task_normalizer.state_dict(),
        "reward_functions": {name: func.state_dict() for name, func in _stateful_reward_functions(trainer).items()},
        "curriculum": None if getattr(extras, "curriculum", None) is None else extras.curriculum.state_dict(),
        "stage_rewards": stage_rewards_state(extras),
    }
    path = os.path.join(folder, STATE_FILE)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    save_value_state(trainer, trial)  # the critic's weights and optimizer state (value_function)


def load_checkpoint_state(trainer, checkpoint) -> None:
    """Check the fingerprint and restore what :func:`save_checkpoint_state` wrote, when resuming from ``checkpoint``.

    A changed algorithm configuration raises naming each changed field (``check_fingerprint``; allowed with
    ``resume_allow_config_change=True``, then a warning). A checkpoint without the file is an error when
    running state would be lost, else a warning. An unreadable file raises ``ValueError`` naming the file and
    the checkpoint.
    """
    extras = getattr(trainer, "grpo_custom", None)
    if extras is None or checkpoint is None:
        return
    stateful = _stateful_reward_functions(trainer)
    path = os.path.join(checkpoint, STATE_FILE)
    holders = [f"reward function {name!r}" for name in stateful]
    if extras.task_normalizer is not None:
        holders.insert(0, f"task_normalization={extras.task_normalizer.mode!r}")
    curriculum = getattr(extras, "curriculum", None)
    if curriculum is not None and curriculum.gates:
        holders.append(f"gated reward stages {sorted(curriculum.gates)}")
    if not os.path.exists(path):
        if holders:
            raise FileNotFoundError(
                f"Resuming from {checkpoint} with {', '.join(holders)}, but the checkpoint has no {STATE_FILE}: "
                "their running statistics would be lost."
            )
        logger.warning("Resuming from %s, which has no %s: its algorithm configuration cannot be compared with "
                       "this run's.", checkpoint, STATE_FILE)
        return
    try:
        with open(path) as handle:
            state = json.load(handle)
        if not isinstance(state, dict):
            raise ValueError(f"expected a JSON object, got {type(state).__name__}")
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {path} (grpo-custom's state of checkpoint {checkpoint}): {error}") from error
    if curriculum is not None:  # before the fingerprint: a changed gate is refused by stage name
        curriculum.load_state_dict(state.get("curriculum") or {}, path,
                                   allow_change=getattr(trainer.args, "resume_allow_config_change", False))
        extras.stage_rewards = state.get("stage_rewards")
    check_fingerprint(trainer, state.get("fingerprint"), path)
    if extras.task_normalizer is not None:
        if state.get("task_normalizer") is None:
            raise ValueError(f"{path} holds no task normalizer state, but task_normalization is set.")
        extras.task_normalizer.load_state_dict(state["task_normalizer"])
    saved_rewards = state.get("reward_functions", {})
    for name, func in stateful.items():
        if name not in saved_rewards:
            raise ValueError(f"{path} holds no state for reward function {name!r}; saved: {sorted(saved_rewards)}.")
        func.load_state_dict(saved_rewards[name])
    load_value_state(trainer, checkpoint)  # after the fingerprint: a changed value_function is refused by name


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

