"""Hooks that run while the trainer is built: routed reward functions, the per-trainer state
(:class:`TrainerExtras` at ``trainer.grpo_custom``), reward guards, the task-balanced sampler.

A trainer built from a stock TRL ``GRPOConfig`` gets TRL's behaviour: the ``grpo`` estimator and no
regularizers, schedule or routing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from grpo_custom.algorithms.estimators import get_advantage_estimator
from grpo_custom.algorithms.regularizers import RegularizerSpec
from grpo_custom.fork.hooks.policy import policy_loss_spec, resolve_estimator


@dataclass
class TrainerExtras:
    """grpo-custom's per-trainer state, built once by :func:`configure_trainer`."""

    estimator: Callable
    estimator_name: str
    estimator_options: dict
    regularizers: list[RegularizerSpec]
    reward_schedule: Any = None
    task_column: str | None = None
    task_normalizer: Any = None
    check_rewards: str | dict = "off"  # a mode, or {reward name: mode} (see reward_check_mode)
    rewards_checked: bool = False
    reward_constancy: Any = None  # ConstancyEvidence over the first batches (rewards.watch_reward_constancy)
    configured_weights: torch.Tensor | None = None
    estimator_is_trls: bool = False  # the estimator is exactly TRL's inline computation (reuse its result)
    policy_loss: Any = None  # PolicyLossSpec; None on a trainer made before grpo-custom configured it
    pending_metrics: dict = field(default_factory=dict)
    step_context: dict = field(default_factory=dict)  # step/progress/stage of the batch being scored
    started: bool = False  # the start-of-training checks ran (hooks.start.validate_at_start)
    critic: Any = None  # grpo_custom.value.critic.Critic with value_function (built on first use)
    curriculum: Any = None  # rewards.gates.CurriculumState with a reward_schedule (hooks.curriculum.attach_curriculum)
    stage_rewards: dict | None = None  # the current reward stage's scores (hooks.reward_stats)
    last_stage: int | None = None  # index of the reward stage of the last generated training batch

    def placed(self, placement: str) -> list[RegularizerSpec]:
        """The regularizers with the given placement (``"loss"``, ``"reward"`` or ``"parameters"``)."""
        return [spec for spec in self.regularizers if spec.placement == placement]


def _option(args, name: str, default):
    """A grpo-custom option from ``args``; a stock TRL config has none of them (TRL behaviour)."""
    return getattr(args, name, default)


def _specs(args) -> list[RegularizerSpec]:
    specs = getattr(args, "regularizer_specs", None)
    if specs is None:
        from grpo_custom.algorithms.regularizers import parse_regularizers

        specs = parse_regularizers(_option(args, "regularizers", None))
    return specs


def needs_reference_logps(args) -> bool:
    """Whether a configured regularizer needs reference log-probs (TRL computes them only if beta != 0)."""
    return any(spec.needs_reference for spec in _specs(args))


def prepare_reward_funcs(args, reward_funcs):
    """The trainer's reward functions with ``args.task_rewards`` routed in.

    ``task_rewards={task: [fn, ...]}``: the routed functions (and their ``task_weights``) are added after
    ``reward_funcs``, which score every sample. ``task_rewards=router``: ``reward_funcs`` are the functions the
    router picks from (``route_rewards``'s ``all_functions``) and each is replaced by its routed wrapper;
    ``reward_weights`` keep their meaning.
    """
    task_rewards = _option(args, "task_rewards", None)
    if task_rewards is None:
        return reward_funcs
    from grpo_custom.rewards.tasks import route_rewards

    shared = [] if reward_funcs is None else list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs]
    if callable(task_rewards):
        if not shared:
            raise ValueError(
                "task_rewards is a routing callable: pass the reward functions it chooses from as reward_funcs."
            )
        return route_rewards(task_rewards, args.task_column, all_functions=shared)[0]
    routed, routed_weights = route_rewards(task_rewards, args.task_column, _option(args, "task_weights", None))
    _check_distinct_reward_names(shared + routed)
    if args.reward_weights is None:
        args.reward_weights = [1.0] * len(shared) + list(routed_weights)
    elif len(args.reward_weights) == len(shared):
        args.reward_weights = list(args.reward_weights) + list(routed_weights)
    return shared + routed


def configure_trainer(trainer, args) -> None:
    """Resolve estimator, regularizers, schedule, reward guards and task normalization for ``trainer``."""
    estimator_choice, mix_options = resolve_estimator(args)
    options = mix_options if mix_options is not None else dict(_option(args, "advantage_estimator_kwargs", None) or {})
    if estimator_choice == "grpo" and args.multi_objective_aggregation == "normalize_then_sum":
        estimator_choice = "gdpo"  # TRL's normalize-then-sum aggregation is the gdpo estimator
    if estimator_choice == "grpo":
        options.setdefault("scale_rewards", args.scale_rewards)
    estimator = get_advantage_estimator(estimator_choice) if isinstance(estimator_choice, str) else estimator_choice
    # With its default options the built-in grpo (or gdpo, for TRL's normalize_then_sum) is TRL's own
    # inline computation, so its result can be reused instead of computed twice per step.
    trl_options = {"scale_rewards": args.scale_rewards} if estimator_choice == "grpo" else {}
    estimator_is_trls = (isinstance(estimator_choice, str) and estimator_choice in ("grpo", "gdpo")
                         and estimator is get_advantage_estimator(estimator_choice) and options == trl_options
                         and (estimator_choice == "grpo") == (args.multi_objective_aggregation == "sum_then_normalize"))
    estimator_name = estimator_choice if isinstance(estimator_choice, str) else getattr(estimator, "__name__", "custom")

    schedule = _option(args, "reward_schedule", None)
    if schedule is not None:
        schedule.validate_reward_names(list(trainer.reward_func_names))

    normalizer = None
    if _option(args, "task_normalization", None) is not None:
        from grpo_custom.rewards.tasks import TaskNormalizer

        normalizer = TaskNormalizer(args.task_normalization)

    trainer.grpo_custom = TrainerExtras(
        estimator=estimator,
        estimator_name=estimator_name,
        estimator_options=options,
        regularizers=_specs(args),
        reward_schedule=schedule,
        task_column=_option(args, "task_column", None),
        task_normalizer=normalizer,
        check_rewards=_option(args, "check_rewards", "off"),
        configured_weights=trainer.reward_weights.clone(),
        estimator_is_trls=estimator_is_trls,
        policy_loss=policy_loss_spec(args),
    )
    _check_reward_check_names(trainer)
    _guard_reward_functions(trainer, _option(args, "reward_errors", "raise"))
    _check_fast_path(trainer, args)


def reward_check_mode(extras: TrainerExtras, name: str) -> str:
    """The start-up check's mode for reward ``name``: ``check_rewards`` itself, or its entry in a per-function
    dict (``"warn"`` for a function the dict does not name)."""
    modes = extras.check_rewards
    return modes.get(name, "warn") if isinstance(modes, dict) else modes


def _check_reward_check_names(trainer) -> None:
    """A per-function ``check_rewards`` dict must name the trainer's reward functions (``reward_func_names``)."""
    modes = trainer.grpo_custom.check_rewards
    if isinstance(modes, dict):
        unknown = sorted(set(modes) - set(trainer.reward_func_names))
        if unknown:
            raise ValueError(
                f"check_rewards names {unknown}, which are not reward functions of this trainer; its reward "
                f"functions are {list(trainer.reward_func_names)} (trainer.reward_func_names)."
            )


def reference_model(model, model_init_kwargs: dict):
    """The frozen reference policy of a full (non-PEFT) model, for ``beta != 0`` or a KL regularizer.

    TRL reloads the reference from the model's path (``config._name_or_path``); a model built in memory has
    none (TRL then fails asking for a repo id ''), so it gets a frozen deep copy of itself as it is when the
    trainer is built: the same starting policy the reload gives a model just loaded from its path.
    """
    from trl.trainer.utils import create_model_from_path, get_config_model_id

    model_id = get_config_model_id(model.config)
    if model_id:
        return create_model_from_path(model_id, **model_init_kwargs)
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def _check_fast_path(trainer, args) -> None:
    """Under Unsloth's compiled trainer: refuse options its fast loss drops, report its config rewrites.

    The check is the one the Unsloth patch installed on the trainer class (``grpo_custom_fast_path_check``,
    :func:`grpo_custom.unsloth.honest_config.check_fast_path_config`); TRL's path has none.
    """
    check = getattr(type(trainer), "grpo_custom_fast_path_check", None)
    if check is not None:
        check(args)


def _guard_reward_functions(trainer, policy: str) -> None:
    """Wrap every reward function (not model rewards) in ``guard_reward_function``; counts go to the metrics.

    The guard also passes the batch's step context (``step``, ``progress``, ``stage``, set per batch by
    ``rewards.before_reward_functions``) under the names no dataset column uses.
    """
    from grpo_custom.rewards.guard import guard_reward_function
    from grpo_custom.rewards.tasks import TaskRoutingError

    extras = trainer.grpo_custom

    def record(name: str, counts: dict) -> None:
        for kind, count in counts.items():
            key = f"reward_errors/{name}/{kind}"
            extras.pending_metrics[key] = extras.pending_metrics.get(key, 0.0) + float(count)

    trainer.reward_funcs = [
        func
        if isinstance(func, nn.Module)
        else guard_reward_function(func, name, policy=policy, on_bad=record, reraise=(TaskRoutingError,),
                                   extra_kwargs=lambda: extras.step_context)
        for func, name in zip(trainer.reward_funcs, trainer.reward_func_names)
    ]


def task_balanced_sampler(trainer, dataset):
    """With ``task_balance=True``, the train sampler: a ``TaskBalancedSampler`` in ``RepeatSampler``'s layout.

    Same arguments as TRL's ``RepeatSampler`` (G copies of each prompt, chunks of
    ``generation_batch_size // G`` prompts, each repeated ``num_iterations * steps_per_generation`` times,
    seeded with ``args.seed``), so groups stay intact. ``None`` otherwise (TRL's sampler).
    """
    args = trainer.args
    if not _option(args, "task_balance", False):
        return None
    from grpo_custom.rewards.tasks import TaskBalancedSampler

    return TaskBalancedSampler(
        dataset,
        args.task_column,
        trainer.num_generations,
        batch_size=args.generation_batch_size // trainer.num_generations,
        repeat_count=trainer.num_iterations * args.steps_per_generation,
        seed=args.seed,
    )


def _check_distinct_reward_names(reward_funcs: list) -> None:
    """TRL logs ``rewards/<name>/...`` per function: a shared and a routed function with one name would mix."""
    from trl.trainer.utils import get_callable_name

    names = [get_callable_name(func) for func in reward_funcs if callable(func) and not isinstance(func, nn.Module)]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"Reward functions {duplicates} appear both in reward_funcs and in task_rewards (or twice); a function "
            "shared by every task belongs in reward_funcs only, a task's own function in task_rewards only."
        )
