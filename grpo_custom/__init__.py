"""grpo-custom: a forked GRPO trainer for Unsloth with pluggable advantage estimators,
regularizers and reward schedules that run inside Unsloth's fast LoRA loss.

``from grpo_custom import GRPOConfig, GRPOTrainer`` gives the fork (TRL's trainer generated from
the installed, pinned TRL plus grpo-custom's edits); after :func:`patch_unsloth` it gives the
Unsloth-compiled fork. Importing this package patches nothing.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .estimators import (
    get_advantage_estimator,
    list_advantage_estimators,
    register_advantage_estimator,
    validate_estimator_options,
)
from .kl import KL_KINDS, kl_estimate, sequence_kl
from .regularizers import (
    RegularizerInputs,
    RegularizerSpec,
    get_regularizer,
    list_regularizers,
    parse_regularizers,
    register_regularizer,
)
from .reward_check import RewardCheckReport, check_reward, reward_length_correlation
from .reward_guard import RewardFunctionError, guard_reward_function
from .rewards import (
    THINK_ANSWER_PATTERN,
    code_execution_reward,
    format_reward,
    length_reward,
    math_answer_reward,
    run_in_sandbox,
)
from .schedules import RewardSchedule, Schedule, Stage, blend
from .tasks import TaskNormalizer, TaskRoutingError, audit_tasks, route_rewards
from .reward_model import RewardModelReward
from .unsloth_patch import UnslothPatchError, patch_unsloth

__all__ = [
    "GRPOConfig",
    "GRPOTrainer",
    "KL_KINDS",
    "RegularizerInputs",
    "RegularizerSpec",
    "RewardCheckReport",
    "RewardFunctionError",
    "RewardModelReward",
    "RewardSchedule",
    "Schedule",
    "Stage",
    "THINK_ANSWER_PATTERN",
    "TaskNormalizer",
    "TaskRoutingError",
    "UnslothPatchError",
    "__version__",
    "audit_tasks",
    "blend",
    "check_reward",
    "code_execution_reward",
    "format_reward",
    "get_advantage_estimator",
    "get_regularizer",
    "guard_reward_function",
    "kl_estimate",
    "length_reward",
    "list_advantage_estimators",
    "list_regularizers",
    "math_answer_reward",
    "parse_regularizers",
    "patch_unsloth",
    "register_advantage_estimator",
    "register_regularizer",
    "reward_length_correlation",
    "route_rewards",
    "run_in_sandbox",
    "sequence_kl",
    "validate_estimator_options",
]


def __getattr__(name: str):
    # The trainer and config are resolved on access: the fork is generated on first use, and after
    # patch_unsloth() these names give Unsloth's compiled fork.
    if name == "GRPOTrainer":
        from .trainer_classes import current_trainer_class

        return current_trainer_class()
    if name == "GRPOConfig":
        from .trainer_classes import current_config_class

        return current_config_class()
    raise AttributeError(f"module 'grpo_custom' has no attribute {name!r}")
