"""Hooks before the reward functions run: the step context (``step``, ``progress``, ``stage``), the
schedule's reward weights, the one-time reward direction check; and, after them, the constancy evidence."""
from __future__ import annotations

import logging

from torch import nn

from grpo_custom.fork.hooks.configure import reward_check_mode
from grpo_custom.fork.hooks.curriculum import announce_fixed_stage, log_gates
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
    stage = schedule.stage_at(step, max_steps or None, _opened(trainer)) if schedule is not None else None
    return {"step": step, "progress": progress, "stage": stage}


def _opened(trainer) -> dict | None:
    """Gated stage name → the step its gate opened (``hooks.curriculum``), with ``max_steps`` kept up to date."""
    curriculum = getattr(trainer.grpo_custom, "curriculum", None)
    if curriculum is None:
        return None
    curriculum.max_steps = int(trainer.state.max_steps or 0) or curriculum.max_steps
    return curriculum.starts()


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
    Logs ``schedule/stage`` (the stage index), ``schedule/weight/<reward name>`` per batch and, for gated stages,
    ``schedule/gate/<stage>/{value,hits,open}`` (``hooks.curriculum.log_gates``); a training batch generated in a
    new fixed-start stage prints one line (gated stages print theirs when the gate opens).

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
        weights = schedule.weights_at(context["step"], trainer.state.max_steps or None, _opened(trainer))
        current = extras.configured_weights.clone()
        for index, name in enumerate(trainer.reward_func_names):
            if name in weights:
                current[index] = float(weights[name])
        trainer.reward_weights = current
        stage_names = [stage.name for stage in schedule.stages]
        index = stage_names.index(context["stage"])
        _log(trainer, mode, "schedule/stage", index)
        if extras.curriculum is not None and extras.curriculum.gates:
            log_gates(trainer, mode)
        if mode == "train":
            if extras.last_stage is not None and index != extras.last_stage and index not in dict(schedule.gated_stages):
                announce_fixed_stage(trainer, index, extras.curriculum.resolved().stages[index])
            extras.last_stage = index
        for index, name in enumerate(trainer.reward_func_names):
            _log(trainer, mode, f"schedule/weight/{name}", current[index].item())
    if not extras.rewards_checked and any(reward_check_mode(extras, name) != "off" for name in trainer.reward_func_names):
        extras.rewards_checked = True
        _check_reward_directions(trainer, prompts, inputs)


def _check_reward_directions(trainer, prompts, inputs) -> None:
    """``check_reward`` on each rule reward function (the user's function, unguarded and unrouted).

    The probes get the first two samples of the real batch: their prompts and dataset columns (e.g. a
    ``solution`` column), and one probe per column stating that row's value. Each function's mode is
    ``configure.reward_check_mode``. Not probed (no probe where none is needed): learned rewards (``nn.Module``
    and ``RewardModelReward``: their preferences are learned, not written) and rewards that declare
    ``higher_is_better = True`` (the built-ins). What a probe call prints is captured, not shown. Problems
    (each message says what was probed) are logged as a warning, or raise ``ValueError`` for a function in
    mode ``"error"``; a direction that could not be established is logged (info) as unchecked. A reward that
    is the same on every probe is no problem here: :func:`watch_reward_constancy` judges that on real
    completions.
    """
    from grpo_custom.rewards.direction_check import check_reward
    from grpo_custom.rewards.reward_model import RewardModelReward

    extras = trainer.grpo_custom
    problems: dict[str, list[str]] = {"warn": [], "error": []}
    for func, name in zip(trainer.reward_funcs, trainer.reward_func_names):
        mode = reward_check_mode(extras, name)
        inner = _user_reward_function(func)
        if (mode == "off" or isinstance(inner, (nn.Module, RewardModelReward))
                or getattr(inner, "higher_is_better", None) is True):
            continue
        columns = {key: [example[key] for example in inputs[:2]] for key in inputs[0]
                   if key not in ("prompt", "completion", "completion_ids")}
        report = check_reward(inner, prompts=list(prompts[:2]), columns=columns)
        if not report.ok:
            problems[mode].append(f"reward function {name!r}: " + "; ".join(report.problems)
                                  + f" (probed with {report.probed})")
        elif report.direction == "unchecked":
            logger.info("Reward check of %r: no problem found; its direction is unchecked (no length preference "
                        "found to judge). Probed with %s.", name, report.probed)
    if problems["error"]:
        raise ValueError("Reward check failed (check_rewards='error'): " + " | ".join(problems["error"])
                         + " Fix the reward, or set its check_rewards mode to 'warn' or 'off' to train anyway.")
    if problems["warn"]:
        logger.warning("Reward check failed (check_rewards='warn'): " + " | ".join(problems["warn"]))


def watch_reward_constancy(trainer, mode: str, rewards_per_func, frac_zero_std, num_generations: int) -> None:
    """Judge, on the model's own completions, whether a reward function gives any learning signal.

    Feeds each training generation batch's ``rewards_per_func`` [N, F] and the per-function ``frac_zero_std``
    just logged (``reward_health/<f>/frac_zero_std``) to a :class:`~grpo_custom.rewards.reward_health.
    ConstancyEvidence` kept at ``trainer.grpo_custom.reward_constancy``; after the first
    :data:`~grpo_custom.rewards.reward_health.EVIDENCE_BATCHES` batches, every function (whose
    ``check_rewards`` mode is not ``"off"``) that scored every group with zero spread is logged once as a
    warning (main process), under modes ``"warn"`` and ``"error"`` alike: it is what the run has shown so far,
    not a reason to stop it. Evaluation batches and ``num_generations < 2`` are not watched.
    """
    from grpo_custom.rewards.reward_health import ConstancyEvidence, constancy_warning

    extras = trainer.grpo_custom
    names = list(trainer.reward_func_names)
    watched = {name for name in names if reward_check_mode(extras, name) != "off"}
    if mode != "train" or num_generations < 2 or not watched:
        return
    if extras.reward_constancy is None:
        routed = [name for func, name in zip(trainer.reward_funcs, names) if _is_routed(func)]
        extras.reward_constancy = ConstancyEvidence(names, routed=routed)
    findings = extras.reward_constancy.update(rewards_per_func, frac_zero_std, num_generations)
    findings = [finding for finding in findings if finding.name in watched]
    if findings and trainer.accelerator.is_main_process:
        warn_above_progress_bars(logger, "Reward check on the model's completions: " + constancy_warning(findings))


def warn_above_progress_bars(log: logging.Logger, message: str) -> None:
    """``log.warning(message)`` for a warning raised during training: the console handlers that print it (on ``log``
    and the loggers it propagates to) write through ``tqdm.write`` for this one record, so the trainer's progress
    bar is cleared, the message printed on lines of its own, and the bar redrawn below it (a plain handler writes
    it into the middle of the bar's line)."""
    import sys

    from tqdm.contrib.logging import logging_redirect_tqdm

    chain, current = [], log
    while current is not None:
        if any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in current.handlers):
            chain.append(current)
        current = current.parent if current.propagate else None
    if not chain:
        log.warning(message)
        return
    with logging_redirect_tqdm(loggers=chain):
        log.warning(message)


def _is_routed(func) -> bool:
    """Whether a trainer reward function is task-routed (inside its guard)."""
    from grpo_custom.rewards.tasks import RoutedRewardFunction

    while not isinstance(func, RoutedRewardFunction) and hasattr(func, "__wrapped__"):
        func = func.__wrapped__
    return isinstance(func, RoutedRewardFunction)


def _user_reward_function(func):
    """The user's reward function inside the trainer's guard and task-routing wrappers."""
    from grpo_custom.rewards.tasks import RoutedRewardFunction

    while hasattr(func, "__wrapped__") or isinstance(func, RoutedRewardFunction):
        func = func.function if isinstance(func, RoutedRewardFunction) else func.__wrapped__
    return func

