"""Trainer paths real runs take: rows no reward scores, truncated completions, evaluation with one generation.

Issue 13 parts 1-3: the fork adds nothing to structures TRL iterates per row; "completion length" is the
number of tokens generated everywhere; evaluation with ``num_generations_eval=1`` works for every estimator,
regularizer and task normalizer.
"""
from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset

import grpo_custom
from grpo_custom import list_advantage_estimators, list_regularizers
from grpo_custom.testing.length_task import length_dataset
from grpo_custom.rewards.guard import BadRewardWarning
from tests.helpers import cpu_training_kwargs, letter_fraction_reward, lora_model


def _trainer(model_dir, output_dir, reward_funcs, dataset=None, extra_eos=None, **overrides):
    model, tokenizer = lora_model(model_dir)
    if extra_eos is not None:  # more end-of-sequence ids: the random tiny model then finishes some completions
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, *extra_eos]
    options = dict(max_steps=1, per_device_train_batch_size=4, check_rewards="off")
    options.update(overrides)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(output_dir), **options))
    return grpo_custom.GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, processing_class=tokenizer,
                                   train_dataset=length_dataset(16) if dataset is None else dataset)


def first_unscorable(prompts, completions, **kwargs):
    """The issue's minimal input: the first completion cannot be scored."""
    return [None] + [0.5] * (len(completions) - 1)


def test_a_row_no_reward_scores_trains_and_gets_trl_s_warning(tiny_model_dir, tmp_path, caplog):
    trainer = _trainer(tiny_model_dir, tmp_path, [first_unscorable])
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "All reward functions returned None for the following kwargs" in caplog.text
    entry = trainer.state.log_history[0]
    assert entry["reward"] == pytest.approx(0.5)  # the unscorable row is left out, as TRL does


def test_a_single_raising_reward_under_nan_policy_trains(tiny_model_dir, tmp_path):
    def judge_down(prompts, completions, **kwargs):
        raise RuntimeError("judge down")

    trainer = _trainer(tiny_model_dir, tmp_path, [judge_down], reward_errors="nan")
    with pytest.warns(BadRewardWarning):
        trainer.train()
    assert trainer.state.log_history[0]["reward_errors/judge_down/exception"] == 4.0
    assert trainer.state.global_step == 1


def test_code_execution_reward_on_a_row_without_tests_trains(tiny_model_dir, tmp_path):
    from grpo_custom.rewards import code_execution_reward

    dataset = Dataset.from_dict({"prompt": ["def f():", "def g():"] * 4, "tests": ["", "assert True"] * 4})
    trainer = _trainer(tiny_model_dir, tmp_path, [code_execution_reward()], dataset=dataset)
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("column", ["step", "progress", "stage"])
def test_a_dataset_column_named_like_the_step_context_reaches_rewards_unchanged(tiny_model_dir, tmp_path, column,
                                                                                caplog):
    seen = {}

    def reward(prompts, completions, **kwargs):
        seen.update({key: kwargs.get(key) for key in ("step", "progress", "stage")})
        return letter_fraction_reward(prompts, completions)

    dataset = Dataset.from_dict({"prompt": ["a:", "b:", "c:", "d:"] * 4, column: ["from the dataset"] * 16})
    trainer = _trainer(tiny_model_dir, tmp_path, [reward], dataset=dataset)
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert seen[column] == ["from the dataset"] * 4
    context = {"step": 0, "progress": 0.0, "stage": None}
    assert {key: value for key, value in seen.items() if key != column} == {k: v for k, v in context.items()
                                                                         if k != column}
    assert f"The dataset has column(s) ['{column}']" in caplog.text


def test_lengths_are_tokens_generated_under_mask_truncated_completions(tiny_model_dir, tmp_path):
    """DAPO soft overlong (target 4, buffer 8): each completion's penalty is clamp((L - 4) / 8, 0, 1) with L the
    tokens it generated, truncated ones included (their loss mask is zeroed, their length is not)."""
    generated = []

    def recorder(prompts, completions, completion_ids, **kwargs):
        generated.extend(len(ids) for ids in completion_ids)
        return letter_fraction_reward(prompts, completions)

    trainer = _trainer(tiny_model_dir, tmp_path, [recorder], extra_eos=list(range(97, 123)),
                       mask_truncated_completions=True, max_completion_length=12,
                       regularizers=[{"name": "length", "coef": 1.0, "target": 4, "mode": "soft", "buffer": 8}])
    trainer.train()
    entry = trainer.state.log_history[0]
    assert 0.0 < entry["completions/clipped_ratio"] < 1.0, entry  # some truncated, some finished
    expected = sum(min(max((length - 4) / 8, 0.0), 1.0) for length in generated) / len(generated)
    assert entry["regularizers/length/value"] == pytest.approx(expected)
    rewards = torch.tensor(letter_fraction_reward(None, trainer._logs["completion"]), dtype=torch.float64)
    lengths = torch.tensor(generated, dtype=torch.float64)
    assert entry["reward_health/recorder/length_corr"] == pytest.approx(
        torch.corrcoef(torch.stack([rewards, lengths]))[0, 1].item(), abs=1e-6)


def test_opo_weights_by_tokens_generated_under_mask_truncated_completions(tiny_model_dir, tmp_path):
    """opo: A_i = r_i − Σ L_j r_j / Σ L_j over the group, L the tokens generated (truncated ones included)."""
    seen = {}

    def recorder(prompts, completions, completion_ids, **kwargs):
        seen["lengths"] = [len(ids) for ids in completion_ids]
        seen["rewards"] = letter_fraction_reward(prompts, completions)
        return seen["rewards"]

    trainer = _trainer(tiny_model_dir, tmp_path, [recorder], extra_eos=list(range(97, 123)),
                       mask_truncated_completions=True, advantage_estimator="opo")
    trainer.train()
    lengths = torch.tensor(seen["lengths"], dtype=torch.float64)
    rewards = torch.tensor(seen["rewards"], dtype=torch.float64)
    assert 12 in seen["lengths"] and min(seen["lengths"]) < 12, seen  # truncated and finished completions
    expected = rewards - (lengths * rewards).sum() / lengths.sum()
    assert trainer._logs["advantages"] == pytest.approx(expected.tolist(), abs=1e-6)


def _eval_trainer(model_dir, output_dir, **overrides):
    dataset = Dataset.from_dict({"prompt": ["a:", "b:", "c:", "d:"] * 4, "task": ["x", "y"] * 8})
    return _trainer(model_dir, output_dir, overrides.pop("reward_funcs", [letter_fraction_reward]), dataset=dataset,
                    num_generations_eval=1, per_device_eval_batch_size=2, **overrides)


EVAL_CONFIGS = (
    [pytest.param({"advantage_estimator": name, **({"value_function": {"kind": "head"}} if name == "gae" else {})},
                  id=f"estimator-{name}") for name in list_advantage_estimators()]
    + [pytest.param({"regularizers": [{"name": name, "coef": 0.1, **({"target": 4} if name == "length" else {})}]},
                    id=f"regularizer-{name}") for name in list_regularizers()]
    + [pytest.param({"regularizers": [{"name": "kl", "coef": 0.1, "placement": "reward"}]}, id="regularizer-kl-reward")]
    + [pytest.param({"task_column": "task", "task_normalization": mode, "reward_funcs": None,
                     "task_rewards": {"x": [letter_fraction_reward], "y": [letter_fraction_reward]}},
                    id=f"task_normalization-{mode}") for mode in ("group", "running")]
)


@pytest.mark.parametrize("config", EVAL_CONFIGS)
def test_evaluate_with_one_generation_gives_zero_advantages_and_eval_metrics(tiny_model_dir, tmp_path, config):
    trainer = _eval_trainer(tiny_model_dir, tmp_path, **config)
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    metrics = trainer.evaluate(trainer.train_dataset.select(range(4)))
    assert metrics["eval_advantages/abs_max"] == 0.0  # a group of one has no baseline (TRL's value)
    assert "eval_reward" in metrics
    for spec in trainer.grpo_custom.regularizers:
        assert f"eval_{spec.metric_prefix}/value" in metrics
    assert all(torch.equal(param, before[name]) for name, param in trainer.model.named_parameters())
    if trainer.grpo_custom.task_normalizer is not None and trainer.grpo_custom.task_normalizer.mode == "running":
        assert trainer.grpo_custom.task_normalizer.state_dict()["tasks"] == {}  # eval does not feed them
