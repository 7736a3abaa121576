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
from .regularizers import RegularizerInputs, RegularizerSpec, get_regularizer

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
    """Add the task-routed reward functions of ``args.task_rewards`` (and their weights) to ``reward_funcs``."""
    task_rewards = _option(args, "task_rewards", None)
    if task_rewards is None:
        return reward_funcs
    from .tasks import route_rewards

    shared = [] if reward_funcs is None else list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs]
    routed, routed_weights = route_rewards(task_rewards, args.task_column, _option(args, "task_weights", None))
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
    )
    _guard_reward_functions(trainer, _option(args, "reward_errors", "raise"))


def _guard_reward_functions(trainer, policy: str) -> None:
    from .reward_guard import guard_reward_function

    extras = trainer.grpo_custom

    def record(name: str, counts: dict) -> None:
        for kind, count in counts.items():
            key = f"reward_errors/{name}/{kind}"
            extras.pending_metrics[key] = extras.pending_metrics.get(key, 0.0) + float(count)

    trainer.reward_funcs = [
        func if isinstance(func, nn.Module) else guard_reward_function(func, name, policy=policy, on_bad=record)
        for func, name in zip(trainer.reward_funcs, trainer.reward_func_names)
    ]


def _mode(trainer) -> str:
    return "train" if trainer.model.training else "eval"


def _log(trainer, mode: str, name: str, value: float) -> None:
    trainer._metrics[mode][name].append(float(value))


def schedule_context(trainer) -> dict:
    """``step``, ``progress`` and ``stage`` for the batch about to be scored (the generation step)."""
    step = int(trainer.state.global_step)
    max_steps = int(trainer.state.max_steps or 0)
    progress = step / max_steps if max_steps > 0 else 0.0
    schedule = trainer.grpo_custom.reward_schedule
    stage = schedule.stage_at(step, max_steps or None) if schedule is not None else None
    return {"step": step, "progress": progress, "stage": stage}


def before_reward_functions(trainer, inputs, prompts, completions) -> dict:
    """Set the reward weights in force for this batch and return the step-aware reward kwargs."""
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
        _check_reward_directions(trainer, prompts)
    return context


def _check_reward_directions(trainer, prompts) -> None:
    from .reward_check import check_reward

    problems = []
    for func, name in zip(trainer.reward_funcs, trainer.reward_func_names):
        if isinstance(func, nn.Module):
            continue
        report = check_reward(getattr(func, "__wrapped__", func), prompts=list(prompts[:2]))
        if not report.ok:
            problems.append(f"reward function {name!r}: " + "; ".join(report.problems))
    if problems:
        message = "Reward check failed (check_rewards=...): " + " | ".join(problems)
        if trainer.grpo_custom.check_rewards == "error":
            raise ValueError(message + " Set check_rewards='off' to skip the check.")
        logger.warning(message)


def _gathered_completion_mask(trainer, completion_mask: torch.Tensor) -> torch.Tensor:
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
    old_per_token_logps: torch.Tensor | None,
    policy_per_token_logps: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """Advantages for the whole (gathered) generation batch from the configured estimator.

    Order: weighted sum of the reward functions (NaN for completions no function scored, as in
    TRL) → minus each reward-placed regularizer's ``coef · penalty`` → per-task normalization →
    the estimator. Logs ``advantages/{mean,std,abs_max}`` and the reward-health metrics.
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
            policy_per_token_logps, mode,
        ).to(device)

    tasks = None
    if extras.task_column is not None:
        from accelerate.utils import gather_object

        tasks = gather_object([example[extras.task_column] for example in inputs])
    if extras.task_normalizer is not None:
        rewards = extras.task_normalizer.normalize(rewards, tasks, num_generations)

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
        for name, value in task_metrics(tasks, rewards, per_sequence, num_generations, lengths).items():
            _log(trainer, mode, name, value)
    for name, value in extras.pending_metrics.items():
        _log(trainer, mode, name, value)
    extras.pending_metrics.clear()
    return result


def _reward_penalties(trainer, specs, completion_mask, ref_logps, old_logps, policy_logps_fn, mode) -> torch.Tensor:
    """Σ coef · penalty over the reward-placed regularizers, gathered over processes: [N]."""
    step = int(trainer.state.global_step)
    logps = None
    if any(spec.needs_reference for spec in specs):
        if old_logps is None:
            with torch.no_grad():
                old_logps = policy_logps_fn()
        logps = old_logps
    lengths = completion_mask.sum(dim=1)
    inputs = RegularizerInputs(
        logps=logps, old_logps=old_logps, ref_logps=ref_logps, mask=completion_mask.float(),
        advantages=None, entropies=None, model=None, completion_lengths=lengths,
    )
    total = torch.zeros(completion_mask.size(0), device=completion_mask.device)
    for spec in specs:
        coef = spec.coef_at(step)
        penalty, metrics = get_regularizer(spec.name)(inputs, **spec.options)  # [B]
        total = total + coef * penalty
        _log_regularizer(trainer, mode, spec, coef, metrics)
        _log(trainer, mode, f"{spec.metric_prefix}/reward_penalty", (coef * penalty).mean().item())
    return trainer.accelerator.gather(total)


def _log_regularizer(trainer, mode: str, spec: RegularizerSpec, coef: float, metrics: dict) -> None:
    _log(trainer, mode, f"{spec.metric_prefix}/coef", coef)
    for key, value in metrics.items():
        _log(trainer, mode, f"{spec.metric_prefix}/{key}", value)


def _log_advantage_metrics(trainer, mode: str, advantages: torch.Tensor, mask: torch.Tensor) -> None:
    values = advantages if advantages.dim() == 1 else advantages[mask.bool()]
    _log(trainer, mode, "advantages/mean", values.mean().item())
    _log(trainer, mode, "advantages/std", values.std().item() if values.numel() > 1 else 0.0)
    _log(trainer, mode, "advantages/abs_max", values.abs().max().item() if values.numel() else 0.0)


def _log_reward_health(trainer, mode: str, rewards_per_func, num_generations: int, lengths) -> None:
    """Per reward function: NaN rate, fraction of zero-variance groups, correlation with length."""
    from trl.trainer.utils import nanstd

    from .reward_check import reward_length_correlation

    for index, name in enumerate(trainer.reward_func_names):
        column = rewards_per_func[:, index]
        _log(trainer, mode, f"reward_health/{name}/nan_rate", torch.isnan(column).float().mean().item())
        if num_generations > 1:
            std = nanstd(column.view(-1, num_generations), dim=1)
            zero = torch.isclose(torch.nan_to_num(std, nan=0.0), torch.zeros_like(std))
            _log(trainer, mode, f"reward_health/{name}/frac_zero_std", zero.float().mean().item())
        correlation = reward_length_correlation(column.tolist(), lengths.tolist())
        _log(trainer, mode, f"reward_health/{name}/length_corr", correlation)


def _accumulation_steps(trainer) -> int:
    return trainer.current_gradient_accumulation_steps if trainer.model.training else 1


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
    """``per_token_loss + Σ coef · term`` over the loss-placed regularizers (a zero coefficient adds nothing)."""
    specs = trainer.grpo_custom.placed("loss")
    if not specs:
        return per_token_loss
    mode = _mode(trainer)
    step = int(trainer.state.global_step)
    reg_inputs = RegularizerInputs(
        logps=per_token_logps, old_logps=old_per_token_logps, ref_logps=inputs.get("ref_per_token_logps"),
        mask=mask.float(), advantages=advantages, entropies=entropies, model=None,
        completion_lengths=mask.sum(dim=1),
    )
    for spec in specs:
        coef = spec.coef_at(step)
        term, metrics = get_regularizer(spec.name)(reg_inputs, **spec.options)  # [B, T]
        weighted = torch.as_tensor(coef, dtype=term.dtype, device=term.device) * term  # [B, T]
        if coef != 0.0:
            per_token_loss = per_token_loss + weighted
        contribution = aggregate_like_loss_type(
            weighted.detach(), mask, loss_type=trainer.loss_type,
            max_completion_length=trainer.max_completion_length,
            num_items_in_batch=inputs.get("num_items_in_batch"),
            num_processes=trainer.accelerator.num_processes,
            accumulation_steps=_accumulation_steps(trainer),
            steps_per_generation=trainer.args.steps_per_generation if trainer.model.training else 1,
        )
        _log_regularizer(trainer, mode, spec, coef, metrics)
        _log(trainer, mode, f"{spec.metric_prefix}/loss", contribution.item() * _accumulation_steps(trainer))
    return per_token_loss


def parameter_regularizer_loss(trainer, model) -> torch.Tensor | float:
    """Σ coef · term over parameter-space regularizers, scaled for gradient accumulation (0.0 if none)."""
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
        term, metrics = get_regularizer(spec.name)(reg_inputs, **spec.options)
        if coef != 0.0:
            total = total + coef * term / _accumulation_steps(trainer)
        _log_regularizer(trainer, mode, spec, coef, metrics)
        _log(trainer, mode, f"{spec.metric_prefix}/loss", coef * float(term.detach()))
    return total


def save_checkpoint_state(trainer, trial) -> None:
    """Write grpo-custom's running state (task normalization statistics) into the checkpoint folder."""
    extras = getattr(trainer, "grpo_custom", None)
    if extras is None or extras.task_normalizer is None or not trainer.args.should_save:
        return
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    with open(os.path.join(folder, STATE_FILE), "w") as handle:
        json.dump({"task_normalizer": extras.task_normalizer.state_dict()}, handle)


def load_checkpoint_state(trainer, checkpoint) -> None:
    """Restore what :func:`save_checkpoint_state` wrote, when resuming from ``checkpoint``."""
    extras = getattr(trainer, "grpo_custom", None)
    if extras is None or extras.task_normalizer is None or checkpoint is None:
        return
    path = os.path.join(checkpoint, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Resuming from {checkpoint} with task_normalization={extras.task_normalizer.mode!r}, but the "
            f"checkpoint has no {STATE_FILE}: its running statistics would be lost."
        )
    with open(path) as handle:
        extras.task_normalizer.load_state_dict(json.load(handle)["task_normalizer"])
