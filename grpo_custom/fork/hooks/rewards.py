"""Hooks before the reward functions run: the step context (``step``, ``progress``, ``stage``), the
schedule's reward weights, and the one-time reward direction check."""
from __future__ import annotations

import logging

from torch import nn

from grpo_custom.fork.hooks.configure import reward_check_mode
from grpo_custom.fork.hooks.metrics import _log, _mode
from grpo_custom.fork.hooks.start import validate_at_start

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


def before_reward_functions(trainer, inputs, prompts, completions) -> None:
    """Set the reward weights in force for this batch and the step context its reward functions receive.

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

    ``{"step", "progress", "stage"}`` reach the reward functions as keyword arguments through their guard
    (``configure._guard_reward_functions``), never through TRL's ``reward_kwargs``: TRL reads every entry
    there as one value per row (its "All reward functions returned None" warning indexes them). A dataset
    column with one of these names keeps its values. The first call runs :func:`validate_at_start`.
    """
    extras = trainer.grpo_custom
    context = schedule_context(trainer)
    extras.step_context = context
    if not extras.started:
        extras.started = True
        validate_at_start(trainer, inputs)
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
    if not extras.rewards_checked and any(reward_check_mode(extras, name) != "off" for name in trainer.reward_func_names):
        extras.rewards_checked = True
        _check_reward_directions(trainer, prompts, inputs)


def _check_reward_directions(trainer, prompts, inputs) -> None:
    """``check_reward`` on each rule reward function (the user's function, unguarded and unrouted).

    The probes get the first two samples of the real batch: their prompts and dataset columns (e.g. a
    ``solution`` column), and one probe per column stating that row's value. Each function's mode is
    ``configure.reward_check_mode``. Learned rewards (``nn.Module`` and ``RewardModelReward``) are not probed:
    their preferences are learned, not written. Problems are logged as a warning, or raise ``ValueError`` for
    a function in mode ``"error"``; a direction that could not be established is logged (info) as unchecked.
    """
    from grpo_custom.rewards.direction_check import check_reward
    from grpo_custom.rewards.reward_model import RewardModelReward

    extras = trainer.grpo_custom
    problems: dict[str, list[str]] = {"warn": [], "error": []}
    for func, name in zip(trainer.reward_funcs, trainer.reward_func_names):
        mode = reward_check_mode(extras, name)
        inner = _user_reward_function(func)
        if mode == "off" or isinstance(inner, (nn.Module, RewardModelReward)):
            continue
        columns = {key: [example[key] for example in inputs[:2]] for key in inputs[0]
                   if key not in ("prompt", "completion", "completion_ids")}
        report = check_reward(inner, prompts=list(prompts[:2]), columns=columns)
        if not report.ok:
            problems[mode].append(f"reward function {name!r}: " + "; ".join(report.problems))
        elif report.direction == "unchecked":
            logger.info("Reward check of %r: no problem found; its direction is unchecked (no length preference "
                        "found to judge).", name)
    if problems["error"]:
        raise ValueError("Reward check failed (check_rewards='error'): " + " | ".join(problems["error"])
                         + " Fix the reward, or set its check_rewards mode to 'warn' or 'off' to train anyway.")
    if problems["warn"]:
        logger.warning("Reward check failed (check_rewards='warn'): " + " | ".join(problems["warn"]))


def _user_reward_function(func):
    """The user's reward function inside the trainer's guard and task-routing wrappers."""
    from grpo_custom.rewards.tasks import RoutedRewardFunction

    while hasattr(func, "__wrapped__") or isinstance(func, RoutedRewardFunction):
        func = func.function if isinstance(func, RoutedRewardFunction) else func.__wrapped__
    return func

