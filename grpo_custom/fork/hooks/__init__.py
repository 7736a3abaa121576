"""The functions the fork's edits call (see ``patches/grpo_trainer.py``).

Each hook receives the trainer and the upstream locals it needs, and returns what the upstream
code continues with. All grpo-custom state of a trainer lives in one :class:`TrainerExtras`
object at ``trainer.grpo_custom``. A trainer built from a stock TRL ``GRPOConfig`` gets TRL's
behaviour: the ``grpo`` estimator and no regularizers, schedule or routing.

The fork imports this package as ``grpo_custom_hooks``; the hooks live in one module per job:
:mod:`.configure` (while the trainer is built), :mod:`.rewards` (before the reward functions run),
:mod:`.curriculum` (gated reward stages), :mod:`.reward_stats` (reward distributions),
:mod:`.model_rewards` (scores TRL stored past the guard), :mod:`.advantages`, :mod:`.loss`, :mod:`.policy` (the policy loss), :mod:`.checkpoint`, :mod:`.value` (the critic of
``value_function``, :mod:`grpo_custom.value`), and :mod:`.metrics`
(what they log); helpers:
:mod:`.lengths` (tokens generated), :mod:`.start` (checks at the first batch), :mod:`.fingerprint` (resume).
"""
from .advantages import compute_advantages
from .checkpoint import STATE_FILE, load_checkpoint_state, save_checkpoint_state
from .curriculum import attach_curriculum
from .configure import (
    TrainerExtras,
    configure_trainer,
    needs_reference_logps,
    prepare_reward_funcs,
    reference_model,
    task_balanced_sampler,
)
from .lengths import generated_lengths
from .model_rewards import check_scored_rewards
from .loss import add_loss_regularizers, parameter_regularizer_loss
from .policy import policy_per_token_loss
from .rewards import before_reward_functions, schedule_context
from .value import (
    add_value_outputs,
    begin_value_capture,
    check_value_function,
    load_value_state,
    rollout_values,
    save_value_state,
    value_function_loss,
)

__all__ = [
    "STATE_FILE",
    "TrainerExtras",
    "add_loss_regularizers",
    "attach_curriculum",
    "before_reward_functions",
    "check_scored_rewards",
    "compute_advantages",
    "configure_trainer",
    "generated_lengths",
    "load_checkpoint_state",
    "needs_reference_logps",
    "parameter_regularizer_loss",
    "policy_per_token_loss",
    "prepare_reward_funcs",
    "reference_model",
    "save_checkpoint_state",
    "schedule_context",
    "task_balanced_sampler",
    "add_value_outputs",
    "check_value_function",
    "begin_value_capture",
    "load_value_state",
    "rollout_values",
    "save_value_state",
    "value_function_loss",
]
