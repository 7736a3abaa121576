"""Curriculum gates in the trainer: the run's ``CurriculumState`` (``grpo_custom.rewards.gates``) fed by a
``TrainerCallback`` (evaluations, optimizer steps), the checks at construction, and stage-relative schedules.

Timing. The evaluation at optimizer step ``N`` (``eval_strategy="steps"``, ``N % eval_steps == 0``) runs after
update ``N`` and before the batch generated at ``global_step = N``; a gate that opens there starts its stage at
step ``N``: every batch generated from then on gets the weights of ``Stage(start=N)`` (the reward hook samples
the schedule at the generation step, so with ``steps_per_generation > gradient_accumulation_steps`` the new
weights arrive with the next generated batch, exactly as for a fixed start). ``max_step`` openings are applied
at the end of each optimizer step.
"""
from __future__ import annotations

import math
import numbers

from transformers import TrainerCallback

from grpo_custom.rewards.gates import CurriculumState


def attach_curriculum(trainer, args) -> None:
    """Once ``Trainer.__init__`` has run: the run's ``CurriculumState``, its callback, bound stage-relative schedules.

    Raises:
        ValueError: a gated ``reward_schedule`` without an ``eval_dataset`` or with ``eval_strategy="no"``, saying
            what to set; a ``Schedule.after_stage`` naming a stage the reward schedule lacks (or no schedule).
    """
    extras = getattr(trainer, "grpo_custom", None)
    if extras is None:
        return
    schedule = extras.reward_schedule
    if schedule is not None and schedule.gated_stages:
        _check_evaluation(trainer, args, schedule)
    curriculum = CurriculumState(schedule) if schedule is not None else None
    extras.curriculum = curriculum
    _bind_stage_schedules(trainer, args, curriculum)
    if curriculum is not None:
        trainer.add_callback(CurriculumCallback(trainer))


def _check_evaluation(trainer, args, schedule) -> None:
    """Gates read evaluation metrics: the run must evaluate."""
    gated = ", ".join(f"stage {stage.name!r} ({stage.start!r})" for _, stage in schedule.gated_stages)
    missing = []
    if trainer.eval_dataset is None:
        missing.append("pass eval_dataset=... to the trainer")
    if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no":
        missing.append("set eval_strategy='steps' (with eval_steps=N) or 'epoch' in GRPOConfig")
    if missing:
        raise ValueError(f"reward_schedule has gated stages ({gated}), which open on evaluation metrics, but this run "
                         f"never evaluates: {' and '.join(missing)}.")


def _stage_schedules(value, found: list) -> list:
    """Every ``Schedule.after_stage`` object inside ``value`` (dicts, lists, regularizer specs, blends)."""
    from grpo_custom.algorithms.regularizers import RegularizerSpec
    from grpo_custom.rewards.scalar_schedule import _AfterStage

    if isinstance(value, _AfterStage):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _stage_schedules(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _stage_schedules(item, found)
    elif isinstance(value, RegularizerSpec):
        _stage_schedules(value.coef, found)
    elif callable(getattr(value, "schedule", None)):  # blend()'s reward function
        _stage_schedules(value.schedule, found)
    return found


def _bind_stage_schedules(trainer, args, curriculum) -> None:
    """Bind every ``Schedule.after_stage`` the configuration holds to this run's stage starts."""
    from grpo_custom.fork.hooks.rewards import _user_reward_function

    places = [getattr(args, name, None) for name in (
        "regularizer_specs", "regularizers", "trust_region_schedules", "policy_loss_kwargs", "advantage_estimator")]
    places += [_user_reward_function(func) for func in trainer.reward_funcs]
    schedules = _stage_schedules(places, [])
    if not schedules:
        return
    names = [] if curriculum is None else [stage.name for stage in curriculum.schedule.stages]
    for schedule in schedules:
        if schedule.stage not in names:
            raise ValueError(
                f"{schedule!r} follows stage {schedule.stage!r}, but the reward_schedule "
                + (f"has only the stages {names}." if names else "is not set (reward_schedule=RewardSchedule([...]).")
            )
        schedule.bind(curriculum.start_of)


def _gathered_metrics(trainer, metrics: dict) -> dict:
    """The numeric evaluation metrics averaged over processes (keys every process logged), the same on every rank.

    TRL's reward metrics are computed from rewards gathered over processes, so they already agree; timing
    metrics (``eval_runtime``) differ per process and are averaged like any other.
    """
    numeric = {key: float(value) for key, value in metrics.items()
               if isinstance(value, numbers.Real) and not isinstance(value, bool)}
    if trainer.accelerator.num_processes == 1:
        return numeric
    from accelerate.utils import gather_object

    every = gather_object([numeric])
    common = set(every[0]).intersection(*every[1:])
    return {key: math.fsum(entry[key] for entry in every) / len(every) for key in sorted(common)}


class CurriculumCallback(TrainerCallback):
    """Feeds the run's ``CurriculumState``: ``max_step`` openings after every optimizer step, the gated
    metrics after every evaluation during training; writes the last stage's reward summary at the end."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        self.trainer.grpo_custom.curriculum.max_steps = int(state.max_steps or 0) or None

    def on_step_end(self, args, state, control, **kwargs):
        curriculum = self.trainer.grpo_custom.curriculum
        for opened in curriculum.reach(int(state.global_step)):
            announce_gate(self.trainer, *opened)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.training:  # an evaluate() call outside train() moves no gate
            return
        curriculum = self.trainer.grpo_custom.curriculum
        step = int(state.global_step)
        for opened in curriculum.evaluation(step, _gathered_metrics(self.trainer, metrics or {})):
            announce_gate(self.trainer, *opened)

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        from grpo_custom.fork.hooks.reward_stats import write_stage_summary

        write_stage_summary(self.trainer, final=True)


def announce_gate(trainer, index: int, stage, state) -> None:
    """One line when a gate opens: step, stage, and the metric value that opened it (main process only)."""
    gate = stage.start
    if state.reason == "max_step":
        why = f"max_step {gate.max_step} reached ({gate.describe()} did not hold; last value {state.value})"
    else:
        why = f"{gate.describe()} held at {state.hits} consecutive evaluation(s); value {state.value:g}"
    if trainer.accelerator.is_main_process:
        print(f"[grpo-custom] step {state.opened_at}: reward stage {index} {stage.name!r} starts: {why}", flush=True)


def log_gates(trainer, mode: str) -> None:
    """``schedule/gate/<stage>/{value,hits,open}`` for every gated stage (value once an evaluation watched it)."""
    from grpo_custom.fork.hooks.metrics import _log

    curriculum = trainer.grpo_custom.curriculum
    for name, state in curriculum.gates.items():
        if state.value is not None:
            _log(trainer, mode, f"schedule/gate/{name}/value", state.value)
        _log(trainer, mode, f"schedule/gate/{name}/hits", state.hits)
        _log(trainer, mode, f"schedule/gate/{name}/open", float(state.opened_at is not None))


def announce_fixed_stage(trainer, index: int, stage) -> None:
    """One line when a stage with a fixed start begins (gated stages are announced when their gate opens)."""
    if trainer.accelerator.is_main_process:
        print(f"[grpo-custom] step {stage.start}: reward stage {index} {stage.name!r} starts (fixed start).", flush=True)
