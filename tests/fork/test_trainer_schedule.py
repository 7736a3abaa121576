"""Reward schedules end to end on the plain TRL path: weights per step, blends, reward kwargs, resume, errors."""
from __future__ import annotations

import os

import pytest
import torch

import grpo_custom
from grpo_custom import RewardSchedule, Schedule, Stage
from grpo_custom.testing.length_task import length_dataset
from tests.helpers import cpu_training_kwargs, lora_model

STEPS = 8
SAVE_STEPS = 3


def letter_fraction(prompts, completions, **kwargs):
    """Share of ASCII letters in each completion."""
    return [sum(ch.isascii() and ch.isalpha() for ch in c) / max(len(c), 1) for c in completions]


def space_fraction(prompts, completions, **kwargs):
    """Share of spaces in each completion."""
    return [c.count(" ") / max(len(c), 1) for c in completions]


# letters only → (steps 2..6) a linear blend towards mostly spaces → from 0.875 · 8 = step 7 a mix.
SCHEDULE = RewardSchedule([
    Stage(0, {"letters": 1.0, "spaces": 0.0}, name="letters_only"),
    Stage(2, {"letters": 0.2, "spaces": 1.0}, blend="linear", transition=4, name="shift"),
    Stage(0.875, {"letters": 0.5}, name="mix"),
])
BLEND_MIX = Schedule.cosine(0.0, 1.0, 1, 6)
BLENDED_WEIGHT = 0.5


class RewardLog:
    """Reward functions that record what TRL passes them and what they return, call by call."""

    def __init__(self):
        self.calls = {}  # name -> [{"step", "progress", "stage", "global_step", "values"}]
        self.advantages = []  # [N] advantages per generation, when the trainer is recorded

    def function(self, name, score):
        """``score`` as a TRL reward function named ``name`` that records each call."""

        def reward(prompts, completions, **kwargs):
            values = score(prompts, completions, **kwargs)
            self.calls.setdefault(name, []).append({
                "step": kwargs["step"], "progress": kwargs["progress"], "stage": kwargs["stage"],
                "global_step": kwargs["trainer_state"].global_step, "values": values,
            })
            return values

        reward.__name__ = name
        return reward

    def reward_funcs(self):
        """letters, spaces and a blend of the two (its inner functions are not recorded)."""
        blended = grpo_custom.blend(letter_fraction, space_fraction, BLEND_MIX, name="blended")
        return [self.function("letters", letter_fraction), self.function("spaces", space_fraction),
                self.function("blended", blended)]


def _trainer(model_dir, output_dir, log, *, steps=STEPS, schedule=SCHEDULE, **overrides):
    model, tokenizer = lora_model(model_dir)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(
        str(output_dir), max_steps=steps, check_rewards="off", reward_schedule=schedule,
        reward_weights=[1.0, 1.0, BLENDED_WEIGHT], **overrides,
    ))
    return grpo_custom.GRPOTrainer(model=model, reward_funcs=log.reward_funcs(), args=args,
                                   train_dataset=length_dataset(16), processing_class=tokenizer)


def _logged(trainer):
    """Training log entries that carry the schedule metrics, by step."""
    return {entry["step"]: entry for entry in trainer.state.log_history if "schedule/stage" in entry}


def _mean(values):
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def scheduled_run(tiny_model_dir, tmp_path_factory):
    """An uninterrupted 8-step run that saves checkpoints every 3 steps."""
    log = RewardLog()
    output_dir = tmp_path_factory.mktemp("scheduled")
    trainer = _trainer(tiny_model_dir, output_dir, log, save_strategy="steps", save_steps=SAVE_STEPS)
    generate = trainer._generate_and_score_completions

    def recording(inputs):
        output = generate(inputs)
        log.advantages.append(output["advantages"].detach().clone())
        return output

    trainer._generate_and_score_completions = recording
    trainer.train()
    return trainer, log, output_dir


@pytest.fixture(scope="module")
def resumed_run(scheduled_run, tiny_model_dir, tmp_path_factory):
    """A new trainer resumed from the checkpoint at step 3 (inside the 2..6 transition)."""
    _, _, output_dir = scheduled_run
    checkpoint = os.path.join(output_dir, f"checkpoint-{SAVE_STEPS}")
    assert os.path.isdir(checkpoint)
    log = RewardLog()
    trainer = _trainer(tiny_model_dir, tmp_path_factory.mktemp("resumed"), log)
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer, log


def test_logged_weights_and_stage_follow_the_schedule_step_by_step(scheduled_run):
    trainer, _, _ = scheduled_run
    logged = _logged(trainer)
    assert sorted(logged) == list(range(1, STEPS + 1))
    stage_names = [stage.name for stage in SCHEDULE.resolve(STEPS).stages]
    assert stage_names == ["letters_only", "shift", "mix"]
    for step, entry in logged.items():
        update = step - 1  # the batch of log step s is generated at global_step s − 1
        weights = SCHEDULE.weights_at(update, STEPS)
        assert entry["schedule/stage"] == stage_names.index(SCHEDULE.stage_at(update, STEPS))
        assert entry["schedule/weight/letters"] == pytest.approx(weights["letters"], rel=1e-6, abs=1e-7)
        assert entry["schedule/weight/spaces"] == pytest.approx(weights["spaces"], rel=1e-6, abs=1e-7)
        assert entry["schedule/weight/blended"] == BLENDED_WEIGHT  # not scheduled: the configured weight
    # The transition is really gradual: steps 3..6 sit strictly between the two stages' weights.
    spaces = [logged[step]["schedule/weight/spaces"] for step in range(1, STEPS + 1)]
    assert spaces == pytest.approx([0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert [logged[step]["schedule/stage"] for step in range(1, STEPS + 1)] == [0, 0, 1, 1, 1, 1, 1, 2]
    assert logged[8]["schedule/weight/letters"] == pytest.approx(0.5)


def test_raw_reward_means_and_the_weighted_total_reward_are_logged(scheduled_run):
    trainer, log, _ = scheduled_run
    logged = _logged(trainer)
    for step, entry in logged.items():
        means = {name: _mean(log.calls[name][step - 1]["values"]) for name in ("letters", "spaces", "blended")}
        weights = SCHEDULE.weights_at(step - 1, STEPS)
        for name, mean in means.items():
            assert entry[f"rewards/{name}/mean"] == pytest.approx(mean, rel=1e-5, abs=1e-7)  # unweighted
        total = weights["letters"] * means["letters"] + weights["spaces"] * means["spaces"]
        total += BLENDED_WEIGHT * means["blended"]
        assert entry["reward"] == pytest.approx(total, rel=1e-5, abs=1e-7)


def test_blended_reward_matches_the_mix_at_each_step(scheduled_run):
    _, log, _ = scheduled_run
    mixes = []
    for letters, spaces, blended in zip(log.calls["letters"], log.calls["spaces"], log.calls["blended"], strict=True):
        mix = min(max(BLEND_MIX(blended["step"]), 0.0), 1.0)
        mixes.append(mix)
        expected = [(1 - mix) * a + mix * b for a, b in zip(letters["values"], spaces["values"], strict=True)]
        assert blended["values"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert mixes[0] == mixes[1] == 0.0 and mixes[-1] == 1.0 and 0.0 < mixes[3] < 1.0


def test_reward_functions_receive_step_progress_and_stage(scheduled_run):
    _, log, _ = scheduled_run
    for name in ("letters", "spaces", "blended"):
        calls = log.calls[name]
        assert [call["step"] for call in calls] == list(range(STEPS))
        assert [call["global_step"] for call in calls] == list(range(STEPS))
        assert [call["progress"] for call in calls] == [step / STEPS for step in range(STEPS)]
        assert [call["stage"] for call in calls] == ["letters_only"] * 2 + ["shift"] * 5 + ["mix"]


def test_resume_mid_transition_continues_the_uninterrupted_weights(scheduled_run, resumed_run):
    full, full_log, _ = scheduled_run
    resumed, resumed_log = resumed_run
    assert resumed.state.global_step == STEPS
    full_logged = _logged(full)
    # The resumed trainer's history starts with the checkpoint's entries (steps 1..3), then its own.
    resumed_logged = {step: entry for step, entry in _logged(resumed).items() if step > SAVE_STEPS}
    assert sorted(_logged(resumed)) == list(range(1, STEPS + 1))
    assert sorted(resumed_logged) == list(range(SAVE_STEPS + 1, STEPS + 1))
    keys = ["schedule/stage", "schedule/weight/letters", "schedule/weight/spaces", "schedule/weight/blended"]
    for step, entry in resumed_logged.items():
        assert {key: entry[key] for key in keys} == {key: full_logged[step][key] for key in keys}, step
    assert resumed_logged[SAVE_STEPS + 1]["schedule/weight/spaces"] == pytest.approx(0.25)  # mid-transition
    for name in ("letters", "spaces", "blended"):
        assert [call["step"] for call in resumed_log.calls[name]] == list(range(SAVE_STEPS, STEPS))
        assert [call["stage"] for call in resumed_log.calls[name]] == [
            call["stage"] for call in full_log.calls[name][SAVE_STEPS:]
        ]
    # The checkpoint restores the adapter, optimizer and RNG: the resumed run repeats the uninterrupted one.
    for step, entry in resumed_logged.items():
        assert entry["reward"] == pytest.approx(full_logged[step]["reward"], rel=1e-5, abs=1e-7), step


def test_with_steps_per_generation_the_schedule_is_sampled_at_generation_steps(tiny_model_dir, tmp_path):
    log = RewardLog()
    trainer = _trainer(tiny_model_dir, tmp_path, log, steps=6, steps_per_generation=2,
                       schedule=RewardSchedule([Stage(0, {"letters": 1.0, "spaces": 0.0}),
                                                Stage(1, {"letters": 0.0, "spaces": 1.0}, blend="linear",
                                                      transition=4)]))
    trainer.train()
    schedule = trainer.grpo_custom.reward_schedule
    logged = _logged(trainer)
    assert sorted(logged) == [1, 3, 5]  # one generation feeds two optimizer steps
    assert [call["step"] for call in log.calls["letters"]] == [0, 2, 4]
    for step, entry in logged.items():
        assert entry["schedule/weight/spaces"] == pytest.approx(schedule.weights_at(step - 1)["spaces"], abs=1e-7)
    assert [logged[step]["schedule/weight/spaces"] for step in (1, 3, 5)] == pytest.approx([0.0, 0.25, 0.75])


def test_a_schedule_weight_naming_no_reward_function_fails_when_the_trainer_starts(tiny_model_dir, tmp_path):
    schedule = RewardSchedule([Stage(0, {"letters": 1.0, "spacez": 0.5})])
    with pytest.raises(ValueError, match=r"match no reward function: 'spacez'.*'letters', 'spaces', 'blended'"):
        _trainer(tiny_model_dir, tmp_path, RewardLog(), schedule=schedule)


def test_logged_weights_are_the_weights_used_for_the_advantages(scheduled_run):
    trainer, log, _ = scheduled_run
    group = trainer.num_generations
    assert len(log.advantages) == STEPS
    for step, batch_advantages in enumerate(log.advantages):
        weights = SCHEDULE.weights_at(step, STEPS)
        columns = {name: torch.tensor(log.calls[name][step]["values"], dtype=torch.float64)
                   for name in ("letters", "spaces", "blended")}
        rewards = weights["letters"] * columns["letters"] + weights["spaces"] * columns["spaces"]
        rewards = (rewards + BLENDED_WEIGHT * columns["blended"]).view(-1, group)
        expected = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
        torch.testing.assert_close(batch_advantages.double(), expected.view(-1), rtol=1e-4, atol=1e-4)
