"""``grpo_custom.GRPOConfig``: TRL's ``GRPOConfig`` plus grpo-custom's options, validated once.

Every TRL field keeps its name, default and meaning, so a TRL script runs unchanged. The extra
fields select the advantage estimator, regularizers, reward schedule, reward-error policy, reward
checks and multi-task routing. Invalid values fail here, at construction, naming the option.
"""
from __future__ import annotations

import math
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any

from grpo_custom.fork.effective_config import REQUESTED_ATTRIBUTE
from grpo_custom.fork.retired_options import name_retired_options


def pristine_trl_grpo_config() -> type:
    """TRL's own ``GRPOConfig`` class, even after Unsloth replaced ``trl.trainer.grpo_config.GRPOConfig``."""
    import trl.trainer.grpo_config as grpo_config_module

    candidate = grpo_config_module.GRPOConfig
    for klass in candidate.__mro__:
        # Unsloth renames its UnslothGRPOConfig to look like TRL's class and flags it in its own __dict__.
        unsloth_made = "_unsloth_patched_rl_config" in vars(klass)
        if klass.__name__ == "GRPOConfig" and klass.__module__ == "trl.trainer.grpo_config" and not unsloth_made:
            return klass
    raise RuntimeError(f"Could not find TRL's GRPOConfig in the MRO of {candidate!r}")


_TRLGRPOConfig = pristine_trl_grpo_config()

REWARD_ERROR_POLICIES = ("raise", "nan")
CHECK_REWARDS_MODES = ("warn", "error", "off")
TASK_NORMALIZATION_MODES = (None, "group", "running")
ENTROPY_KERNELS = ("auto", "keep_log_probs", "recompute")


@dataclass
class GRPOConfig(_TRLGRPOConfig):
    """TRL 1.15 ``GRPOConfig`` with grpo-custom's options (all TRL fields unchanged).

    Extra fields:
        advantage_estimator: registered estimator name (see ``grpo_custom.list_advantage_estimators()``)
            or a callable with the estimator contract. ``"grpo"`` reproduces TRL exactly. A dict
            ``{estimator: weight}`` (weights constant or schedules) mixes estimators: Σ w·A (``mix_estimators``).
        advantage_estimator_kwargs: options passed to the estimator (checked against its signature).
        regularizers: list of ``{"name": ..., "coef": ..., <options>}`` dicts or ``RegularizerSpec``.
        reward_schedule: a ``grpo_custom.RewardSchedule``; reward weights follow it per generation step.
        reward_errors: ``"raise"`` (default) or ``"nan"``: what a bad reward output does.
        check_rewards: ``"warn"`` (default), ``"error"`` or ``"off"``: the reward direction check at start; or a
            dict ``{reward function name: mode}`` per function (names as in ``trainer.reward_func_names``;
            functions it does not name: ``"warn"``).
        resume_allow_config_change: resuming from a checkpoint whose algorithm fingerprint (estimator,
            ``scale_rewards``, ``beta``, regularizers, ...) differs warns instead of raising.
        task_column: dataset column naming each sample's task (multi-task training).
        task_rewards: ``{task: [reward_fn, ...]}`` or a routing callable; each completion is scored only by
            its task's functions.
        task_weights: optional per-task weights for ``task_rewards``.
        task_normalization: ``None``, ``"group"`` or ``"running"``: per-task reward normalization.
        task_balance: sample prompts task-balanced (groups stay intact).
        policy_loss: registered policy loss (``grpo_custom.list_policy_losses()``) or a callable with the contract
            ``fn(log_probs, old_log_probs, advantages, mask, *, <options>) -> (per_token_loss, metrics)``;
            ``"ppo_clip"`` (default) is TRL's / Unsloth's own computation. Metrics log as ``policy_loss/<name>``.
        policy_loss_kwargs: its options (checked against its signature); a value may be a schedule ``step -> float``.
        epsilon, epsilon_high, delta: TRL's fields; each may also be a schedule ``step -> float`` (the trust region
            as a schedule: entering the loss as tensors, logged as ``policy_loss/epsilon_low`` etc.).
        entropy_kernel: Unsloth fast path only (no effect on the plain TRL path): how entropies (entropy
            regularizers, ``entropy_coef``, ``top_entropy_quantile``) are computed in the chunked loss. Rule of
            thumb: leave ``"auto"``; ``"recompute"`` takes the least memory; ``"keep_log_probs"`` is the fastest
            where the LM head runs in float32. ``"keep_log_probs"``: one LM-head pass,
            each chunk's float32 log-probs kept for the backward (the memory Unsloth's own log-prob path keeps);
            ``"recompute"``: Unsloth's kernel, per-row statistics only and the logits recomputed in the backward
            (memory flat in B·T·V, one more LM-head matmul; on unsloth_zoo >= 2026.10.9 its fused-linear kernel);
            ``"auto"`` (default): keep only where the LM head runs in float32 and Unsloth's log-prob path holds
            float32 logits of those tokens anyway (its chunked scorer keeps them for that batch, or its
            fused-linear kernel takes all of them in one row chunk), else Unsloth's kernel
            (``grpo_custom.unsloth.entropy_plan.keeps_log_probs``; docs/unsloth.md).
    """

    advantage_estimator: Any = field(default="grpo", metadata={"help": "Advantage estimator name or callable."})
    advantage_estimator_kwargs: dict | None = field(default=None, metadata={"help": "Estimator options."})
    regularizers: list | None = field(default=None, metadata={"help": "Extra loss/reward regularizers."})
    reward_schedule: Any = field(default=None, metadata={"help": "A grpo_custom.RewardSchedule."})
    reward_errors: str = field(default="raise", metadata={"help": "'raise' or 'nan' for bad reward outputs."})
    check_rewards: Any = field(default="warn", metadata={
        "help": "'warn', 'error' or 'off', or a dict {reward function name: mode} (unnamed ones: 'warn')."})
    resume_allow_config_change: bool = field(default=False, metadata={
        "help": "Resume from a checkpoint whose algorithm configuration differs (warns instead of raising)."})
    task_column: str | None = field(default=None, metadata={"help": "Dataset column holding the task name."})
    task_rewards: Any = field(default=None, metadata={"help": "{task: [reward functions]} or a router."})
    task_weights: dict | None = field(default=None, metadata={"help": "Per-task reward weights."})
    task_normalization: str | None = field(default=None, metadata={"help": "None, 'group' or 'running'."})
    task_balance: bool = field(default=False, metadata={"help": "Task-balanced prompt sampling."})
    entropy_kernel: str = field(default="auto", metadata={
        "help": "Unsloth fast path: 'auto', 'keep_log_probs' or 'recompute' (how chunked entropies are computed)."})
    policy_loss: Any = field(default="ppo_clip", metadata={"help": "Policy loss name or callable."})
    policy_loss_kwargs: dict | None = field(default=None, metadata={"help": "Policy loss options (or schedules)."})
    value_function: Any = field(default=None, metadata={
        "help": "A learned critic for advantage_estimator='gae': dict of grpo_custom.ValueFunctionConfig fields."})

    def __post_init__(self):
        self._take_trust_region_schedules()
        # grpo-custom's own options first: a wrong option is named before transformers' device checks
        # (e.g. bf16 on a CPU). These checks read options as written; of them TRL's __post_init__ only
        # rewrites scale_rewards (True -> "group"), which they accept in either spelling.
        self.validate_grpo_custom_options()
        super().__post_init__()

    def _take_trust_region_schedules(self) -> None:
        """A schedule (``step -> float``) in ``epsilon``, ``epsilon_high`` or ``delta`` moves to
        ``trust_region_schedules``; the field keeps its value at step 0, so TRL and Unsloth read a number.
        An unset ``epsilon_high`` follows a scheduled ``epsilon``."""
        schedules = {}
        for name in ("epsilon", "epsilon_high", "delta"):
            value = getattr(self, name)
            if callable(value):
                schedules[name] = value
                setattr(self, name, float(value(0)))
        if "epsilon" in schedules and self.epsilon_high is None:
            schedules["epsilon_high"] = schedules["epsilon"]
        self.trust_region_schedules = schedules

    def validate_grpo_custom_options(self) -> None:
        """Check grpo-custom's options; raises ``ValueError``/``TypeError`` naming the option."""
        from grpo_custom.algorithms.estimators import get_advantage_estimator, validate_estimator_options
        from grpo_custom.algorithms.regularizers import parse_regularizers
        from grpo_custom.fork.hooks.policy import policy_loss_spec, resolve_estimator

        estimator = self.advantage_estimator
        if isinstance(estimator, dict):
            resolve_estimator(self)  # a mix: checks its components, weights and per-component options
        elif isinstance(estimator, str):
            get_advantage_estimator(estimator)
        elif not callable(estimator):
            raise TypeError(
                f"advantage_estimator must be a registered name or a callable, got {type(estimator).__name__}."
            )
        if self.advantage_estimator_kwargs is not None and not isinstance(self.advantage_estimator_kwargs, dict):
            raise TypeError("advantage_estimator_kwargs must be a dict of estimator options.")
        if not isinstance(estimator, dict):
            validate_estimator_options(estimator, dict(self.advantage_estimator_kwargs or {}))
        policy_loss_spec(self)
        self.regularizer_specs = parse_regularizers(self.regularizers)
        if self.reward_schedule is not None:
            from grpo_custom.rewards.reward_schedule import RewardSchedule

            if not isinstance(self.reward_schedule, RewardSchedule):
                raise TypeError(
                    f"reward_schedule must be a grpo_custom.RewardSchedule, got {type(self.reward_schedule).__name__}."
                )
        _check_choice("reward_errors", self.reward_errors, REWARD_ERROR_POLICIES)
        if isinstance(self.check_rewards, dict):
            for reward_name, mode in self.check_rewards.items():
                if not isinstance(reward_name, str):
                    raise TypeError(f"check_rewards keys are reward function names (str), got {reward_name!r}.")
                _check_choice(f"check_rewards[{reward_name!r}]", mode, CHECK_REWARDS_MODES)
        else:
            _check_choice("check_rewards", self.check_rewards, CHECK_REWARDS_MODES)
        _check_choice("task_normalization", self.task_normalization, TASK_NORMALIZATION_MODES)
        _check_choice("entropy_kernel", self.entropy_kernel, ENTROPY_KERNELS)
        self._validate_value_function()
        needs_task_column = self.task_rewards is not None or self.task_normalization is not None or self.task_balance
        if needs_task_column and not self.task_column:
            raise ValueError("task_rewards, task_normalization and task_balance need task_column (the task's column).")
        if self.task_weights is not None and self.task_rewards is None:
            raise ValueError("task_weights is set but task_rewards is not: weights apply to task_rewards.")
        if self.reward_weights is not None and any(not math.isfinite(float(w)) for w in self.reward_weights):
            raise ValueError(f"reward_weights must be finite, got {self.reward_weights}.")

    def _validate_value_function(self) -> None:
        """``value_function`` → ``value_function_config`` (``grpo_custom.value.ValueFunctionConfig``); it feeds the
        ``gae`` estimator and ``gae`` needs it: either without the other is an error naming both."""
        from grpo_custom.algorithms.estimators import ADVANTAGE_ESTIMATORS
        from grpo_custom.value.config import parse_value_function

        self.value_function_config = parse_value_function(self.value_function)
        gae = ADVANTAGE_ESTIMATORS.get("gae")
        estimator = self.advantage_estimator
        components = list(estimator) if isinstance(estimator, dict) else [estimator]  # a mix: its components
        is_gae = any(key == "gae" or key is gae for key in components)
        where = "advantage_estimator='gae'" if not isinstance(estimator, dict) else "the estimator mix's 'gae'"
        if self.value_function_config is not None and not is_gae:
            raise ValueError(f"value_function is set but advantage_estimator={self.advantage_estimator!r}: the critic's "
                             "values are used by advantage_estimator='gae' (GAE(γ, λ) advantages), alone or in a mix.")
        if self.value_function_config is None and is_gae:
            raise ValueError(f"{where} needs a learned value function: set value_function (e.g. "
                             "value_function={'kind': 'head'}, docs/value_function.md), or choose another "
                             "advantage_estimator.")
        config = self.value_function_config
        if config is not None and isinstance(self.max_steps, int) and 0 < self.max_steps <= config.warmup_steps:
            warnings.warn(f"value_function['warmup_steps']={config.warmup_steps} >= max_steps={self.max_steps}: every "
                          "step trains only the critic, the policy never changes.", UserWarning, stacklevel=3)

    def to_dict(self) -> dict:
        """TRL's ``to_dict`` with grpo-custom's objects (callables, schedules) as readable strings."""
        result = super().to_dict()
        for name in GRPO_CUSTOM_FIELDS:
            result[name] = _plain(result.get(name))
        return result

    def __getstate__(self) -> dict:
        # Trainer saves its args with torch.save: keep checkpoints working with lambdas in the config.
        state = dict(self.__dict__)
        state.pop(REQUESTED_ATTRIBUTE, None)  # the Unsloth patch's record of what was written: this process only
        for name in (*GRPO_CUSTOM_FIELDS, "regularizer_specs", "trust_region_schedules", "value_function_config"):
            if name in state:
                try:
                    pickle.dumps(state[name])
                except Exception:
                    state[name] = repr(state[name])
        return state


name_retired_options(GRPOConfig)  # an option TRL / transformers dropped is named with what replaces it

GRPO_CUSTOM_FIELDS = (
    "advantage_estimator",
    "advantage_estimator_kwargs",
    "regularizers",
    "reward_schedule",
    "reward_errors",
    "check_rewards",
    "resume_allow_config_change",
    "task_column",
    "task_rewards",
    "task_weights",
    "task_normalization",
    "task_balance",
    "entropy_kernel",
    "policy_loss",
    "policy_loss_kwargs",
    "value_function",
)


def _check_choice(option: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{option}={value!r} is not valid; choose one of {list(choices)}.")


def _plain(value: Any) -> Any:
    """JSON-friendly form of a config value (callables by name, other objects by repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return repr(value)
