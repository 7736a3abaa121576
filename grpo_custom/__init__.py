"""grpo-custom: a forked GRPO trainer for Unsloth with pluggable advantage estimators,
regularizers and reward schedules that run inside Unsloth's fast LoRA loss.

``from grpo_custom import GRPOConfig, GRPOTrainer`` gives the fork (TRL's trainer generated from
the installed, pinned TRL plus grpo-custom's edits); after :func:`patch_unsloth` it gives the
Unsloth-compiled fork. Importing this package patches nothing and imports nothing heavy: each public
name is imported from its module on first access (see ARCHITECTURE.md for the layers).
"""
from __future__ import annotations

import importlib

from grpo_custom.utils.version import __version__

# Public name -> the module that defines it (imported on first access).
_EXPORTS = {
    "KL_KINDS": "grpo_custom.algorithms.kl",
    "kl_estimate": "grpo_custom.algorithms.kl",
    "sequence_kl": "grpo_custom.algorithms.kl",
    "get_advantage_estimator": "grpo_custom.algorithms.estimators",
    "list_advantage_estimators": "grpo_custom.algorithms.estimators",
    "register_advantage_estimator": "grpo_custom.algorithms.estimators",
    "validate_estimator_options": "grpo_custom.algorithms.estimators",
    "mix_estimators": "grpo_custom.algorithms.estimators.mixing",
    "AdvantageInputs": "grpo_custom.algorithms.estimators",
    "call_estimator": "grpo_custom.algorithms.estimators",
    "compute_gae": "grpo_custom.algorithms.estimators",
    "adaptive_lambda": "grpo_custom.algorithms.estimators",
    "value_loss": "grpo_custom.algorithms.value_loss",
    "explained_variance": "grpo_custom.algorithms.value_loss",
    "ValueFunctionConfig": "grpo_custom.value.config",
    "get_policy_loss": "grpo_custom.algorithms.policy_losses",
    "list_policy_losses": "grpo_custom.algorithms.policy_losses",
    "register_policy_loss": "grpo_custom.algorithms.policy_losses",
    "RegularizerInputs": "grpo_custom.algorithms.regularizers",
    "RegularizerSpec": "grpo_custom.algorithms.regularizers",
    "get_regularizer": "grpo_custom.algorithms.regularizers",
    "list_regularizers": "grpo_custom.algorithms.regularizers",
    "parse_regularizers": "grpo_custom.algorithms.regularizers",
    "register_regularizer": "grpo_custom.algorithms.regularizers",
    "THINK_ANSWER_PATTERN": "grpo_custom.rewards",
    "code_execution_reward": "grpo_custom.rewards",
    "format_reward": "grpo_custom.rewards",
    "length_reward": "grpo_custom.rewards",
    "math_answer_reward": "grpo_custom.rewards",
    "run_in_sandbox": "grpo_custom.rewards",
    "RewardCheckReport": "grpo_custom.rewards.direction_check",
    "check_reward": "grpo_custom.rewards.direction_check",
    "reward_length_correlation": "grpo_custom.rewards.direction_check",
    "RewardFunctionError": "grpo_custom.rewards.guard",
    "guard_reward_function": "grpo_custom.rewards.guard",
    "RewardModelReward": "grpo_custom.rewards.reward_model",
    "Schedule": "grpo_custom.rewards.scalar_schedule",
    "RewardSchedule": "grpo_custom.rewards.reward_schedule",
    "Stage": "grpo_custom.rewards.reward_schedule",
    "Gate": "grpo_custom.rewards.gates",
    "blend": "grpo_custom.rewards.blend",
    "TaskNormalizer": "grpo_custom.rewards.tasks",
    "TaskRoutingError": "grpo_custom.rewards.tasks",
    "audit_tasks": "grpo_custom.rewards.tasks",
    "route_rewards": "grpo_custom.rewards.tasks",
    "UnslothPatchError": "grpo_custom.unsloth.patch",
    "patch_unsloth": "grpo_custom.unsloth.patch",
    "ExperimentError": "grpo_custom.experiments.variants",
    "Variant": "grpo_custom.experiments.variants",
    "compare": "grpo_custom.experiments.compare",
    "load_variant": "grpo_custom.experiments.variants",
    "search": "grpo_custom.experiments.search",
}

__all__ = [
    "ExperimentError",
    "GRPOConfig",
    "GRPOTrainer",
    "Gate",
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
    "Variant",
    "__version__",
    "audit_tasks",
    "blend",
    "check_reward",
    "code_execution_reward",
    "compare",
    "format_reward",
    "get_advantage_estimator",
    "get_policy_loss",
    "get_regularizer",
    "guard_reward_function",
    "kl_estimate",
    "length_reward",
    "list_advantage_estimators",
    "list_policy_losses",
    "list_regularizers",
    "load_variant",
    "math_answer_reward",
    "mix_estimators",
    "parse_regularizers",
    "patch_unsloth",
    "register_advantage_estimator",
    "register_policy_loss",
    "register_regularizer",
    "reward_length_correlation",
    "route_rewards",
    "run_in_sandbox",
    "search",
    "sequence_kl",
    "validate_estimator_options",
]


def __getattr__(name: str):
    # The trainer and config are resolved on every access: the fork is generated on first use, and after
    # patch_unsloth() these names give Unsloth's compiled fork.
    if name == "GRPOTrainer":
        from grpo_custom.unsloth.trainer_classes import current_trainer_class

        return current_trainer_class()
    if name == "GRPOConfig":
        from grpo_custom.unsloth.trainer_classes import current_config_class

        return current_config_class()
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grpo_custom' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
