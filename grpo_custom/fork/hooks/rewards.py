"""Hooks before the reward functions run: the step context (``step``, ``progress``, ``stage``), the
schedule's reward weights, and the one-time reward direction check."""
from __future__ import annotations

import logging

from torch import nn

from grpo_custom.fork.hooks.metrics import _log, _mode

logger = logging.getLogger(__name__)


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
    from grpo_custom.rewards.direction_check import check_reward
    from grpo_custom.rewards.reward_model import RewardModelReward

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


def _user_reward_function(func):
    """The user's reward function inside the trainer's guard and task-routing wrappers."""
    from grpo_custom.rewards.tasks import RoutedRewardFunction

    func = getattr(func, "__wrapped__", func)
    return func.function if isinstance(func, RoutedRewardFunction) else func

