"""The functions the fork's edits call (see ``patches/grpo_trainer.py``).

Each hook receives the trainer and the upstream locals it needs, and returns what the upstream
code continues with. All grpo-custom state of a trainer lives in one :class:`TrainerExtras`
object at ``trainer.grpo_custom``. A trainer built from a stock TRL ``GRPOConfig`` gets TRL's
behaviour: the ``grpo`` estimator and no regularizers, schedule or routing.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .estimators import get_advantage_estimator
from .loss_aggregation import aggregate_like_loss_type
from .regularizers import RegularizerInputs, RegularizerSpec

logger = logging.getLogger(__name__)

STATE_FILE = "grpo_custom_state.json"


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
    check_rewards: str = "off"
    rewards_checked: bool = False
    configured_weights: torch.Tensor | None = None
    estimator_is_trls: bool = False  # the estimator is exactly TRL's inline computation (reuse its result)
    pending_metrics: dict = field(default_factory=dict)

    def placed(self, placement: str) -> list[RegularizerSpec]:
        """The regularizers with the given placement (``"loss"``, ``"reward"`` or ``"parameters"``)."""
        return [spec for spec in self.regularizers if spec.placement == placement]


def _option(args, name: str, default):
    """A grpo-custom option from ``args``; a stock TRL config has none of them (TRL behaviour)."""
    return getattr(args, name, default)


def _specs(args) -> list[RegularizerSpec]:
    specs = getattr(args, "regularizer_specs", None)
    if specs is None:
        from .regularizers import parse_regularizers

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
    from .tasks import route_rewards

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
    estimator_choice = _option(args, "advantage_estimator", "grpo")
    options = dict(_option(args, "advantage_estimator_kwargs", None) or {})
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
        from .tasks import TaskNormalizer

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
    )
    _guard_reward_functions(trainer, _option(args, "reward_errors", "raise"))
    _check_fast_path(trainer, args)


def _check_fast_path(trainer, args) -> None:
    """Under Unsloth's compiled trainer: refuse options its fast loss drops, report its config rewrites."""
    if getattr(type(trainer), "grpo_custom_fast_path", False):
        from .honest_config import check_fast_path_options, report_differences

        check_fast_path_options(args)
        report_differences(args)


def _guard_reward_functions(trainer, policy: str) -> None:
    """Wrap every reward function (not model rewards) in ``guard_reward_function``; counts go to the metrics."""
    from .reward_guard import guard_reward_function
    from .tasks import TaskRoutingError

    extras = trainer.grpo_custom

    def record(name: str, counts: dict) -> None:
        for kind, count in counts.items():
            key = f"reward_errors/{name}/{kind}"
            extras.pending_metrics[key] = extras.pending_metrics.get(key, 0.0) + float(count)

    trainer.reward_funcs = [
        func
        if isinstance(func, nn.Module)
        else guard_reward_function(func, name, policy=policy, on_bad=record, reraise=(TaskRoutingError,))
        for func, name in zip(trainer.reward_funcs, trainer.reward_func_names)
    ]


def _mode(trainer) -> str:
    return "train" if trainer.model.training else "eval"


def _log(trainer, mode: str, name: str, value: float) -> None:
    trainer._metrics[mode][name].append(float(value))


def schedule_context(trainer) -> dict:
    """``step``, ``progress`` and ``stage`` for the batch about to be scored (the generation step).

    ``step`` is ``trainer.state.global_step`` when the batch is generated (optimizer updates done so
    far; the batch trains update ``step`` and is logged under log step ``step + 1``), ``progress``
    is ``step / max_steps`` and ``stage`` the reward schedule's stage name at ``step`` (None without
    a schedule). TRL generates once every ``steps_per_generation × num_iterations`` micro-batches,
    i.e. every ``steps_per_generation × num_iterations / gradient_accumulation_steps`` optimizer
    steps (``num_iterations`` with TRL's default ``steps_per_generation = gradient_accumulation_steps``),
    so a generated batch, and everything computed from it here, keeps the generation step's values
    for all the updates it feeds: the schedule is sampled on that coarser grid.
    """
    step = int(trainer.state.global_step)
    max_steps = int(trainer.state.max_steps or 0)
    progress = step / max_steps if max_steps > 0 else 0.0
    schedule = trainer.grpo_custom.reward_schedule
    stage = schedule.stage_at(step, max_steps or None) if schedule is not None else None
    return {"step": step, "progress": progress, "stage": stage}


def before_reward_functions(trainer, inputs, prompts, completions) -> dict:
    """Set the reward weights in force for this batch and return the step-aware reward kwargs.

    The weights are the reward schedule's at the generation step (see :func:`schedule_context`),
    over the configured ``reward_weights`` for rewards the schedule does not name; they stay in
    force, for the advantages and TRL's weighted ``reward`` metric, until the next generation.
    When a generation feeds several optimizer steps (``steps_per_generation × num_iterations >
    gradient_accumulation_steps``) the weights therefore change only at the steps that generate,
    and ``schedule/*`` is logged only at those steps (like TRL's ``reward``). The weights are a pure
    function of ``global_step``, so a run resumed from a checkpoint continues with the uninterrupted
    run's weights (TRL regenerates at the resumed step, so a resume inside a generation window
    samples the schedule there).
    Logs ``schedule/stage`` (the stage index) and ``schedule/weight/<reward name>`` per batch.

    Returns:
        ``{"step", "progress", "stage"}``, added to the reward functions' keyword arguments.
    """
    extras = trainer.grpo_custom
    context = schedule_context(trainer)
    mode = _mode(trainer)
    schedule = extras.reward_schedule
    if schedule is not None:
        weights = schedule.weights_at(context["step"], trainer.state.max_steps or None)
        current = extras.configured_weights.clone()
        for index, name in enumerate(trainer.reward_func_names):
            if name in weights:
                current[index] = float(weights[name])
        trainer.reward_weights = current
        stage_names = [stage.name for stage in schedule.stages]
        _log(trainer, mode, "schedule/stage", stage_names.index(context["stage"]))
        for index, name in enumerate(trainer.reward_func_names):
            _log(trainer, mode, f"schedule/weight/{name}", current[index].item())
    if not extras.rewards_checked and extras.check_rewards != "off":
        extras.rewards_checked = True
        _check_reward_directions(trainer, prompts, inputs)
    return context


def _check_reward_directions(trainer, prompts, inputs) -> None:
    """``check_reward`` on each rule reward function (the user's function, unguarded and unrouted).

    The probes get the first two samples' prompts and dataset columns (e.g. a ``solution`` column).

    Learned rewards (``nn.Module`` and ``RewardModelReward``) are not probed: their preferences are learned,
    not written. Problems are logged as a warning, or raise ``ValueError`` with ``check_rewards="error"``.
    """
    from .reward_check import check_reward
    from .reward_model import RewardModelReward

    mode = trainer.grpo_custom.check_rewards
    problems = []
    for func, name in zip(trainer.reward_funcs, trainer.reward_func_names):
        inner = _user_reward_function(func)
        if isinstance(inner, (nn.Module, RewardModelReward)):
            continue
        columns = {key: [example[key] for example in inputs[:2]] for key in inputs[0]
                   if key not in ("prompt", "completion", "completion_ids")}
        report = check_reward(inner, prompts=list(prompts[:2]), columns=columns)
        if not report.ok:
            problems.append(f"reward function {name!r}: " + "; ".join(report.problems))
    if problems:
        message = f"Reward check failed (check_rewards={mode!r}): " + " | ".join(problems)
        if mode == "error":
            raise ValueError(message + " Fix the reward, or set check_rewards='warn' or 'off' to train anyway.")
        logger.warning(message)


def _gathered_completion_mask(trainer, completion_mask: torch.Tensor) -> torch.Tensor:
    if trainer.accelerator.num_processes == 1:
        return completion_mask
    padded = trainer.accelerator.pad_across_processes(completion_mask, dim=1, pad_index=0)
    return trainer.accelerator.gather(padded)


def compute_advantages(
    trainer,
    *,
    rewards_per_func: torch.Tensor,
    num_generations: int,
    completion_mask: torch.Tensor,
    inputs: list[dict],
    mode: str,
    ref_per_token_logps: torch.Tensor | None,
    prompt_ids: torch.Tensor | None = None,
    trl_advantages: torch.Tensor | None = None,
    old_per_token_logps: torch.Tensor | None,
    policy_per_token_logps: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """Advantages for the whole (gathered) generation batch from the configured estimator.

    Order: weighted sum of the reward functions (NaN for completions no function scored, as in
    TRL) → minus each reward-placed regularizer's ``coef · penalty`` → per-task normalization →
    the estimator. Logs ``advantages/{mean,std,abs_max}``, the reward-health metrics and, with a
    ``task_column``, ``tasks/<task>/*`` (``tasks.task_metrics``) of the rewards before task normalization.
    """
    extras = trainer.grpo_custom
    device = rewards_per_func.device
    weights = trainer.reward_weights.to(device)
    unscorable = torch.isnan(rewards_per_func).all(dim=1)  # [N]
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)  # [N]
    rewards[unscorable] = torch.nan

    full_mask = _gathered_completion_mask(trainer, completion_mask).to(device)  # [N, T]
    lengths = full_mask.sum(dim=1)  # [N]

    reward_specs = extras.placed("reward")
    if reward_specs:
        rewards = rewards - _reward_penalties(
            trainer, reward_specs, completion_mask, ref_per_token_logps, old_per_token_logps,
            policy_per_token_logps, mode, prompt_ids=prompt_ids,
        ).to(device)

    tasks = _gathered_task_labels(inputs, extras.task_column) if extras.task_column is not None else None
    rewards_before_normalization = rewards  # [N], what the per-task metrics describe
    if extras.task_normalizer is not None:
        import copy

        # evaluation batches use the running statistics without adding to them
        normalizer = extras.task_normalizer if mode == "train" else copy.deepcopy(extras.task_normalizer)
        rewards = normalizer.normalize(rewards, tasks, num_generations)

    if trl_advantages is not None and extras.estimator_is_trls and not reward_specs and extras.task_normalizer is None:
        result = trl_advantages  # TRL just computed exactly this estimator inline (bitwise: tests/test_estimators.py)
    else:
        result = extras.estimator(
            rewards,
            num_generations,
            completion_lengths=lengths,
            completion_mask=full_mask,
            rewards_per_func=rewards_per_func,
            reward_weights=weights,
            **extras.estimator_options,
        )
    _log_advantage_metrics(trainer, mode, result, full_mask)
    _log_reward_health(trainer, mode, rewards_per_func, num_generations, lengths)
    if tasks is not None:
        from .tasks import task_metrics

        per_sequence = result if result.dim() == 1 else (result * full_mask).sum(1) / full_mask.sum(1).clamp(min=1)
        metrics = task_metrics(tasks, rewards_before_normalization, per_sequence, num_generations, lengths)
        for name, value in metrics.items():
            _log(trainer, mode, name, value)
    for name, value in extras.pending_metrics.items():
        _log(trainer, mode, name, value)
    extras.pending_metrics.clear()
    return result


def _reward_penalties(trainer, specs, completion_mask, ref_logps, old_logps, policy_logps_fn, mode,
                      prompt_ids=None) -> torch.Tensor:
    """Σ coef · penalty over the reward-placed regularizers, gathered over processes: [N].

    The penalties read the log-probs of the policy that sampled the batch (``old_logps``, else one
    extra no-grad forward pass) and use the coefficients at the generation step. A zero coefficient
    subtracts nothing (not even a non-finite penalty). Logs ``regularizers/<name>/value``, ``/coef``
    and ``/reward_penalty``: the mean over the batch of the coef · penalty subtracted.
    """
    step = int(trainer.state.global_step)
    logps = None
    if any(spec.needs_reference for spec in specs):
        if old_logps is None:
            with torch.no_grad():
                old_logps = policy_logps_fn()
        logps = old_logps
    if prompt_ids is not None:  # Unsloth returns generation-time log-probs in its window layout
        from .unsloth_layout import window_to_completion

        pad_id = trainer.processing_class.pad_token_id
        width = completion_mask.shape[1]
        logps, old_logps, ref_logps = (None if values is None else window_to_completion(values, prompt_ids, pad_id, width)
                                       for values in (logps, old_logps, ref_logps))
    lengths = completion_mask.sum(dim=1)
    inputs = RegularizerInputs(
        logps=logps, old_logps=old_logps, ref_logps=ref_logps, mask=completion_mask.float(),
        advantages=None, entropies=None, model=None, completion_lengths=lengths,
    )
    total = None
    for spec in specs:
        coef = spec.coef_at(step)
        penalty, metrics = spec.compute(inputs)  # [B]
        weighted = trainer.accelerator.gather(torch.as_tensor(coef, dtype=penalty.dtype) * penalty)  # [N]
        if coef != 0.0:
            total = weighted if total is None else total + weighted
        _log_regularizer(trainer, mode, spec, coef, {**metrics, "reward_penalty": weighted.mean().item()})
    if total is None:
        return trainer.accelerator.gather(torch.zeros_like(lengths, dtype=torch.float32))
    return total


def _log_regularizer(trainer, mode: str, spec: RegularizerSpec, coef: float, metrics: dict) -> None:
    """Log ``regularizers/<label>/coef`` and ``regularizers/<label>/<key>`` for every metric."""
    _log(trainer, mode, f"{spec.metric_prefix}/coef", coef)
    for key, value in metrics.items():
        _log(trainer, mode, f"{spec.metric_prefix}/{key}", value)


def _log_advantage_metrics(trainer, mode: str, advantages: torch.Tensor, mask: torch.Tensor) -> None:
    values = advantages if advantages.dim() == 1 else advantages[mask.bool()]
    if values.numel() == 0:
        mean = std = abs_max = 0.0
    else:
        spread = values.std() if values.numel() > 1 else values.new_zeros(())
        mean, std, abs_max = torch.stack([values.mean(), spread, values.abs().max()]).tolist()  # one sync
    _log(trainer, mode, "advantages/mean", mean)
    _log(trainer, mode, "advantages/std", std)
    _log(trainer, mode, "advantages/abs_max", abs_max)


def _log_reward_health(trainer, mode: str, rewards_per_func, num_generations: int, lengths) -> None:
    """Per reward function ``f`` (column r of ``rewards_per_func`` [N, F]):

    - ``reward_health/<f>/nan_rate``: share of the N completions with r = NaN (unscored: ``None``, a bad
      value under ``reward_errors="nan"``, or another task's sample for a task-routed function);
    - ``reward_health/<f>/frac_zero_std``: share of the groups f scored at least once whose scores have
      zero std (TRL's ``isclose(nanstd, 0)``; one score counts as zero std); not logged when f scored no
      group or G = 1;
    - ``reward_health/<f>/length_corr``: Pearson correlation of r with the completion lengths over the
      scored completions; not logged when undefined (fewer than two, or constant r or lengths).
    """
    import math

    from .reward_check import reward_health_metrics

    table = reward_health_metrics(rewards_per_func, lengths, num_generations).tolist()  # [3, F], one sync
    for index, name in enumerate(trainer.reward_func_names):
        for metric, values in zip(("nan_rate", "frac_zero_std", "length_corr"), table):
            if not math.isnan(values[index]):
                _log(trainer, mode, f"reward_health/{name}/{metric}", values[index])


def _accumulation_steps(trainer) -> int:
    return trainer.current_gradient_accumulation_steps if trainer.model.training else 1


def _kl_importance_ratio(trainer, per_token_logps, old_per_token_logps, mask) -> torch.Tensor | None:
    """π/π_old as TRL's ``coef_1`` when ``use_bias_correction_kl`` is on (TRL's default), else None.

    TRL multiplies its beta KL term by this ratio; the ``kl`` regularizer does the same with it.
    Returns [B, T] for ``importance_sampling_level="token"``, [B, 1] (masked mean log-ratio) for
    ``"sequence"``.
    """
    if not getattr(trainer.args, "use_bias_correction_kl", False) or old_per_token_logps is None:
        return None
    log_ratio = per_token_logps - old_per_token_logps  # [B, T]
    if trainer.importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [B, 1]
    return torch.exp(log_ratio)


def add_loss_regularizers(
    trainer,
    per_token_loss: torch.Tensor,
    *,
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor | None,
    inputs: dict,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    entropies: torch.Tensor | None,
) -> torch.Tensor:
    """``per_token_loss + Σ coef · term`` [B, T] over the loss-placed regularizers.

    Added where TRL adds ``beta · per_token_kl``, so the loss type then masks and normalizes each
    term like the policy loss. The coefficient is the one at ``trainer.state.global_step`` (the
    number of optimizer updates done: the log entry of this update has ``step`` = global_step + 1)
    and enters as a tensor multiplying the term; a zero coefficient adds nothing (exactly the loss
    without the regularizer). KL terms get TRL's ``use_bias_correction_kl`` ratio. Logs
    ``regularizers/<name>/{value,coef,loss}``, ``loss`` being the term's share of the logged loss.
    """
    specs = trainer.grpo_custom.placed("loss")
    if not specs:
        return per_token_loss
    mode = _mode(trainer)
    step = int(trainer.state.global_step)
    accumulation = _accumulation_steps(trainer)
    ratio = None
    if any(spec.needs_reference for spec in specs):
        ratio = _kl_importance_ratio(trainer, per_token_logps, old_per_token_logps, mask)
    reg_inputs = RegularizerInputs(
        logps=per_token_logps, old_logps=old_per_token_logps, ref_logps=inputs.get("ref_per_token_logps"),
        mask=mask.float(), advantages=advantages, entropies=entropies, model=None,
        completion_lengths=mask.sum(dim=1), importance_ratio=ratio,
    )
    for spec in specs:
        coef = spec.coef_at(step)
        term, metrics = spec.compute(reg_inputs)  # [B, T]
        weighted = torch.as_tensor(coef, dtype=term.dtype, device=term.device) * term  # [B, T]
        if coef != 0.0:
            per_token_loss = per_token_loss + weighted
        contribution = aggregate_like_loss_type(
            weighted.detach(), mask, loss_type=trainer.loss_type,
            max_completion_length=trainer.max_completion_length,
            num_items_in_batch=inputs.get("num_items_in_batch"),
            num_processes=trainer.accelerator.num_processes,
            accumulation_steps=accumulation,
            steps_per_generation=trainer.args.steps_per_generation if trainer.model.training else 1,
        )
        _log_regularizer(trainer, mode, spec, coef, {**metrics, "loss": contribution.item() * accumulation})
    return per_token_loss


def parameter_regularizer_loss(trainer, model) -> torch.Tensor | float:
    """Σ coef · term over parameter-space regularizers, scaled for gradient accumulation (0.0 if none).

    Coefficients at ``trainer.state.global_step``, as in :func:`add_loss_regularizers`; a zero
    coefficient adds nothing. Logs ``regularizers/<name>/{value,coef,loss}`` (``loss`` = coef · term).
    """
    specs = trainer.grpo_custom.placed("parameters")
    if not specs:
        return 0.0
    mode = _mode(trainer)
    step = int(trainer.state.global_step)
    reg_inputs = RegularizerInputs(
        logps=None, old_logps=None, ref_logps=None, mask=None, advantages=None, entropies=None,
        model=trainer.accelerator.unwrap_model(model), completion_lengths=None,
    )
    total = 0.0
    for spec in specs:
        coef = spec.coef_at(step)
        term, metrics = spec.compute(reg_inputs)  # scalar
        if coef != 0.0:
            total = total + torch.as_tensor(coef, dtype=term.dtype, device=term.device) * term / _accumulation_steps(
                trainer
            )
        _log_regularizer(trainer, mode, spec, coef, {**metrics, "loss": coef * float(term.detach())})
    return total


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


def _user_reward_function(func):
    """The user's reward function inside the trainer's guard and task-routing wrappers."""
    from .tasks import RoutedRewardFunction

    func = getattr(func, "__wrapped__", func)
    return func.function if isinstance(func, RoutedRewardFunction) else func


def _gathered_task_labels(inputs: list[dict], task_column: str) -> list[str]:
    """The task label of every completion of the (gathered) generation batch, checked: [N]."""
    from accelerate.utils import gather_object

    for index, example in enumerate(inputs):
        label = example.get(task_column)
        if not isinstance(label, str):
            found = f"task {label!r}" if task_column in example else f"no {task_column!r} column"
            raise ValueError(
                f"task_column={task_column!r}: sample {index} of the batch has {found}; every sample needs a "
                f"string task label (its columns: {sorted(example)})."
            )
    return gather_object([example[task_column] for example in inputs])


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


def task_balanced_sampler(trainer, dataset):
    """With ``task_balance=True``, the train sampler: a ``TaskBalancedSampler`` in ``RepeatSampler``'s layout.

    Same arguments as TRL's ``RepeatSampler`` (G copies of each prompt, chunks of
    ``generation_batch_size // G`` prompts, each repeated ``num_iterations * steps_per_generation`` times,
    seeded with ``args.seed``), so groups stay intact. ``None`` otherwise (TRL's sampler).
    """
    args = trainer.args
    if not _option(args, "task_balance", False):
        return None
    from .tasks import TaskBalancedSampler

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
