"""What the trainer checks when it starts and when it resumes (issue 13 parts 4, 8, 9; issue 16 part 9)."""
from __future__ import annotations

import json
import logging
import os

import pytest
from datasets import Dataset

import grpo_custom
from grpo_custom.testing.length_task import length_dataset
from tests.helpers import cpu_training_kwargs, letter_fraction_reward, lora_model


def _trainer(model_dir, output_dir, reward_funcs, dataset=None, **overrides):
    model, tokenizer = lora_model(model_dir)
    options = dict(max_steps=1, per_device_train_batch_size=4, check_rewards="off")
    options.update(overrides)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(output_dir), **options))
    return grpo_custom.GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, processing_class=tokenizer,
                                   train_dataset=length_dataset(16) if dataset is None else dataset)


def distance_to_200(prompts, completions, **kwargs):
    """A distance used as a reward, with a target the check is not told."""
    return [float(abs(200 - len(c))) for c in completions]


def test_a_distance_reward_stops_training_at_start_without_a_target(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, [distance_to_200], check_rewards="error")
    with pytest.raises(ValueError, match=r"'distance_to_200'.*far from the target length .*lowest at 256 chars"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_check_rewards_per_function(tiny_model_dir, tmp_path, caplog):
    both = [distance_to_200, letter_fraction_reward]
    trainer = _trainer(tiny_model_dir, tmp_path / "off", both,
                       check_rewards={"distance_to_200": "off", "letter_fraction_reward": "error"})
    trainer.train()  # the distance reward is not checked, the letter fraction passes
    assert trainer.state.global_step == 1
    trainer = _trainer(tiny_model_dir, tmp_path / "warn", both, check_rewards={"distance_to_200": "warn"})
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "Reward check failed (check_rewards='warn'): reward function 'distance_to_200'" in caplog.text
    with pytest.raises(ValueError, match=r"check_rewards names \['distanse'\].*\['distance_to_200', "):
        _trainer(tiny_model_dir, tmp_path / "typo", both, check_rewards={"distanse": "off"})
    with pytest.raises(ValueError, match=r"check_rewards\['distance_to_200'\]='loud' is not valid"):
        _trainer(tiny_model_dir, tmp_path / "mode", both, check_rewards={"distance_to_200": "loud"})


def test_a_reward_reading_a_column_is_probed_with_the_real_row(tiny_model_dir, tmp_path, caplog):
    from grpo_custom.rewards import math_answer_reward

    def contains_solution(prompts, completions, solution, **kwargs):
        return [1.0 if s in c else None for c, s in zip(completions, solution)]

    dataset = Dataset.from_dict({"prompt": ["2+2=", "3+3="] * 8, "solution": ["4", "6"] * 8,
                                 "tests": ["assert True"] * 16})
    trainer = _trainer(tiny_model_dir, tmp_path, [math_answer_reward(), contains_solution], dataset=dataset,
                       check_rewards="error")
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "Reward check failed" not in caplog.text


def test_a_coefficient_schedule_that_turns_negative_fails_at_start(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, [letter_fraction_reward], max_steps=10,
                       regularizers=[{"name": "entropy", "coef": lambda step: 0.1 - 0.02 * step}])
    with pytest.raises(ValueError, match=r"'entropy': coef schedule returned -0.0[0-9]* at step 6"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_task_the_dataset_lacks_is_warned_about_at_start(tiny_model_dir, tmp_path, caplog):
    dataset = Dataset.from_dict({"prompt": ["a:", "b:"] * 8, "task": ["math"] * 16})
    trainer = _trainer(tiny_model_dir, tmp_path, None, dataset=dataset, task_column="task",
                       task_rewards={"math": [letter_fraction_reward], "code": [letter_fraction_reward]})
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "task_rewards names task(s) ['code'] that no row of the train dataset has" in caplog.text


@pytest.fixture
def checkpoint(tiny_model_dir, tmp_path):
    """A 1-step run (grpo, scale_rewards='group', beta 0) saved at checkpoint-1."""
    trainer = _trainer(tiny_model_dir, tmp_path / "run", [letter_fraction_reward], save_strategy="steps", save_steps=1)
    trainer.train()
    folder = tmp_path / "run" / "checkpoint-1"
    state = json.loads((folder / "grpo_custom_state.json").read_text())
    assert state["fingerprint"]["advantage_estimator"] == "grpo" and state["fingerprint"]["beta"] == 0.0
    assert not [name for name in os.listdir(folder) if ".tmp" in name]  # written to a temporary file, then renamed
    return folder


def _resume(tiny_model_dir, tmp_path, checkpoint, **overrides):
    trainer = _trainer(tiny_model_dir, tmp_path / "resumed", [letter_fraction_reward], max_steps=2, **overrides)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    return trainer


def test_resuming_with_another_algorithm_names_every_changed_field(tiny_model_dir, tmp_path, checkpoint):
    with pytest.raises(ValueError) as caught:
        _resume(tiny_model_dir, tmp_path, checkpoint, advantage_estimator="rloo", scale_rewards="batch", beta=0.04)
    message = str(caught.value)
    assert str(checkpoint) in message
    for change in ("advantage_estimator: 'grpo' in the checkpoint, 'rloo' now", "beta: 0.0 in the checkpoint, 0.04 now",
                   "scale_rewards: 'group' in the checkpoint, 'batch' now"):
        assert change in message


def test_an_allowed_change_warns_and_resumes(tiny_model_dir, tmp_path, checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        trainer = _resume(tiny_model_dir, tmp_path, checkpoint, advantage_estimator="rloo",
                          resume_allow_config_change=True)
    assert trainer.state.global_step == 2
    assert "advantage_estimator: 'grpo' in the checkpoint, 'rloo' now" in caplog.text


def test_the_same_configuration_resumes(tiny_model_dir, tmp_path, checkpoint):
    assert _resume(tiny_model_dir, tmp_path, checkpoint).state.global_step == 2


def test_a_truncated_state_file_is_an_error_naming_file_and_checkpoint(tiny_model_dir, tmp_path, checkpoint):
    path = checkpoint / "grpo_custom_state.json"
    path.write_text(path.read_text()[:20])
    with pytest.raises(ValueError, match=rf"Cannot read {path} \(grpo-custom's state of checkpoint {checkpoint}\)"):
        _resume(tiny_model_dir, tmp_path, checkpoint)
