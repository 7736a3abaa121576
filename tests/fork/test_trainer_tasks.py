"""Multi-task training and reward models in tiny-model runs: routing, per-task metrics and normalization,
checkpointed running statistics, a learned reward model beside rule rewards, task-balanced sampling."""
from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset

import grpo_custom
from grpo_custom.fork.hooks import STATE_FILE
from grpo_custom.rewards.reward_model import RewardModelReward
from grpo_custom.rewards.reward_schedule import RewardSchedule, Stage
from grpo_custom.rewards.tasks import TaskBalancedSampler, TaskRoutingError
from grpo_custom.testing.length_task import length_dataset
from tests.helpers import changed_parameters, cpu_training_kwargs, letter_fraction_reward, lora_model, snapshot

G = 4
N = 8  # completions per generation batch: 2 prompts x G


def record_batches(trainer) -> list[dict]:
    """Record every generation batch: its inputs, the completions table (``trainer._logs``), completion lengths."""
    batches: list[dict] = []
    generate = trainer._generate_and_score_completions

    def recording(inputs):
        output = generate(inputs)
        logs = trainer._logs
        batches.append({
            "inputs": [dict(example) for example in inputs],
            "prompts": list(logs["prompt"]),
            "completions": list(logs["completion"]),
            "rewards": {name: list(values) for name, values in logs["rewards"].items()},
            "advantages": list(logs["advantages"]),
            "lengths": output["completion_mask"].sum(dim=1).tolist(),
        })
        return output

    trainer._generate_and_score_completions = recording
    return batches


def first_char_reward(prompts, completions, **kwargs):
    """Code point of the first character / 255, capped at 1 (0 for an empty completion)."""
    return [min(ord(c[0]), 255) / 255 if c else 0.0 for c in completions]


def vowel_reward(prompts, completions, **kwargs):
    """Fraction of vowels."""
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]


def task_dataset(tasks: list[str]) -> Dataset:
    return Dataset.from_dict({"prompt": length_dataset(len(tasks))["prompt"], "task": tasks})


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A tiny random Qwen2 sequence classifier (one score) with the tiny byte-level tokenizer, saved locally."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from grpo_custom.testing.tiny_model import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, initializer_range=0.2,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1)
    directory = tmp_path_factory.mktemp("reward_model")
    Qwen2ForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def _trainer(model_dir, output_dir, reward_funcs, dataset, **overrides):
    model, tokenizer = lora_model(model_dir)
    options = dict(per_device_train_batch_size=N, num_generations=G, check_rewards="warn")
    options.update(overrides)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(output_dir), **options))
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                                      processing_class=tokenizer)
    return trainer, model


def _logged_steps(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


# ----------------------------------------------------------------------------------------------------------------------
# Two tasks, dict routing with weights, running per-task normalization, checkpoint and resume
# ----------------------------------------------------------------------------------------------------------------------

MIXED_TASKS = ["math", "code"] * 8


def _multitask_trainer(model_dir, reward_model_dir, output_dir):
    reward_model = RewardModelReward(reward_model_dir, normalize="running", name="rm")
    return _trainer(
        model_dir, output_dir, [letter_fraction_reward], task_dataset(MIXED_TASKS),
        max_steps=4, save_strategy="steps", save_steps=2, scale_rewards="none",
        task_column="task", task_rewards={"math": [reward_model, first_char_reward], "code": [vowel_reward]},
        task_weights={"math": {"first_char_reward": 2.0}}, task_normalization="running",
    )


@pytest.fixture(scope="module")
def multitask_runs(tiny_model_dir, reward_model_dir, tmp_path_factory):
    """An uninterrupted 4-step run (checkpoints at 2 and 4), and a run resumed from its step-2 checkpoint."""
    output = tmp_path_factory.mktemp("multitask")
    full, _ = _multitask_trainer(tiny_model_dir, reward_model_dir, output)
    full_batches = record_batches(full)
    full.train()
    resumed, _ = _multitask_trainer(tiny_model_dir, reward_model_dir, tmp_path_factory.mktemp("resumed"))
    resumed_batches = record_batches(resumed)
    resumed.train(resume_from_checkpoint=str(output / "checkpoint-2"))
    return full, full_batches, resumed, resumed_batches, output


def _summed_rewards(batch, names, weights) -> torch.Tensor:
    """Σ_f w_f r_f per completion, NaN-skipping, NaN where no function scored (float64) [N]."""
    per_func = torch.tensor([batch["rewards"][name] for name in names], dtype=torch.float64).T  # [N, F]
    total = (per_func * torch.tensor(weights, dtype=torch.float64)).nansum(dim=1)
    total[torch.isnan(per_func).all(dim=1)] = math.nan
    return total


def _expected_task_metrics(batch, names, weights) -> dict[str, float]:
    tasks = [example["task"] for example in batch["inputs"]]
    rewards = _summed_rewards(batch, names, weights)
    advantages = torch.tensor(batch["advantages"], dtype=torch.float64)
    lengths = torch.tensor(batch["lengths"], dtype=torch.float64)
    expected = {}
    for task in set(tasks):
        rows = [i for i, label in enumerate(tasks) if label == task]
        groups = sorted({i // G for i in rows})
        values = rewards[rows]
        group_std = [rewards[g * G:(g + 1) * G].std().item() for g in groups]
        expected.update({
            f"tasks/{task}/reward_mean": values.mean().item(),
            f"tasks/{task}/reward_std": values.std().item(),
            f"tasks/{task}/frac_reward_zero_std": sum(std < 1e-8 for std in group_std) / len(groups),
            f"tasks/{task}/advantage_mean": advantages[rows].mean().item(),
            f"tasks/{task}/count": float(len(rows)),
            f"tasks/{task}/completion_length": lengths[rows].mean().item(),
        })
    return expected


def test_routed_reward_functions_and_weights(multitask_runs):
    full, batches, _, _, _ = multitask_runs
    assert full.reward_func_names == [
        "letter_fraction_reward", "math/rm", "math/first_char_reward", "code/vowel_reward"]
    assert full.reward_weights.tolist() == [1.0, 1.0, 2.0, 1.0]
    for batch in batches:
        tasks = [example["task"] for example in batch["inputs"]]
        rewards = batch["rewards"]
        assert not any(math.isnan(v) for v in rewards["letter_fraction_reward"])  # shared: scores every task
        for name, task in (("math/rm", "math"), ("math/first_char_reward", "math"), ("code/vowel_reward", "code")):
            assert [not math.isnan(v) for v in rewards[name]] == [label == task for label in tasks], name
        scored = [i for i, label in enumerate(tasks) if label == "code"]
        expected = vowel_reward(None, [batch["completions"][i] for i in scored])
        assert [rewards["code/vowel_reward"][i] for i in scored] == pytest.approx(expected, rel=1e-6)


def test_per_task_metrics_equal_values_recomputed_from_the_logged_completions(multitask_runs):
    full, batches, _, _, _ = multitask_runs
    steps = _logged_steps(full)
    assert len(steps) == len(batches) == 4
    names, weights = full.reward_func_names, full.reward_weights.tolist()
    both_tasks_seen = 0
    for entry, batch in zip(steps, batches):
        expected = _expected_task_metrics(batch, names, weights)
        logged = {key: value for key, value in entry.items() if key.startswith("tasks/")}
        assert set(logged) == set(expected)
        for key, value in expected.items():
            assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        both_tasks_seen += len(expected) == 12
    assert both_tasks_seen >= 1  # at least one batch mixed both tasks


def test_running_normalization_is_per_task_and_feeds_the_estimator(multitask_runs):
    """scale_rewards='none': advantage = r̂ − mean_group(r̂), r̂ = (r − μ_task)/(σ_task + 1e-4), μ and σ over
    every reward of the task so far (this batch included)."""
    full, batches, _, _, _ = multitask_runs
    names, weights = full.reward_func_names, full.reward_weights.tolist()
    seen: dict[str, list[float]] = {"math": [], "code": []}
    for batch in batches:
        tasks = [example["task"] for example in batch["inputs"]]
        rewards = _summed_rewards(batch, names, weights)
        for task in seen:
            seen[task] += [rewards[i].item() for i, label in enumerate(tasks) if label == task]
        normalized = torch.empty_like(rewards)
        for i, task in enumerate(tasks):
            history = torch.tensor(seen[task], dtype=torch.float64)
            std = history.std().item() if len(history) > 1 else 0.0
            normalized[i] = (rewards[i] - history.mean()) / (std + 1e-4)
        grouped = normalized.view(-1, G)
        expected = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
        assert batch["advantages"] == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-5)
    state = full.grpo_custom.task_normalizer.state_dict()["tasks"]
    for task, values in seen.items():
        history = torch.tensor(values, dtype=torch.float64)
        assert state[task]["count"] == len(values)
        # the trainer sums float32 rewards, this test float64 ones
        assert state[task]["mean"] == pytest.approx(history.mean().item(), rel=1e-6)
        assert state[task]["spread"] == pytest.approx(((history - history.mean()) ** 2).sum().item(), rel=1e-5)


def test_running_statistics_survive_checkpoint_and_resume_exactly(multitask_runs):
    full, full_batches, resumed, resumed_batches, output = multitask_runs
    saved = json.loads((output / "checkpoint-2" / STATE_FILE).read_text())
    counts = {task: sum(example["task"] == task for batch in full_batches[:2] for example in batch["inputs"])
              for task in ("math", "code")}
    assert {task: s["count"] for task, s in saved["task_normalizer"]["tasks"].items()} == {
        task: count for task, count in counts.items() if count}
    assert saved["reward_functions"]["math/rm"]["moments"]["count"] == counts["math"]
    # the resumed run replays steps 3-4 exactly and ends with the uninterrupted run's statistics, bit for bit
    assert resumed.state.global_step == 4 and len(resumed_batches) == 2
    for replayed, original in zip(resumed_batches, full_batches[2:]):
        assert replayed["completions"] == original["completions"]
        assert replayed["rewards"].keys() == original["rewards"].keys()
        for name, values in replayed["rewards"].items():
            torch.testing.assert_close(torch.tensor(values), torch.tensor(original["rewards"][name]),
                                       rtol=0, atol=0, equal_nan=True)
    assert resumed.grpo_custom.task_normalizer.state_dict() == full.grpo_custom.task_normalizer.state_dict()
    rm_state = [func.__wrapped__.function.state_dict() for func in (full.reward_funcs[1], resumed.reward_funcs[1])]
    assert rm_state[0] == rm_state[1] and rm_state[0]["moments"]["count"] == sum(
        example["task"] == "math" for batch in full_batches for example in batch["inputs"])


def test_resuming_from_a_checkpoint_without_the_state_file_is_an_error(multitask_runs, tiny_model_dir,
                                                                        reward_model_dir, tmp_path):
    import shutil

    _, _, _, _, output = multitask_runs
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(output / "checkpoint-2", checkpoint)
    (checkpoint / STATE_FILE).unlink()
    trainer, _ = _multitask_trainer(tiny_model_dir, reward_model_dir, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"task_normalization='running', reward function 'math/rm'.*"
                                                r"would be lost"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


# ----------------------------------------------------------------------------------------------------------------------
# Task-balanced sampling, a routing callable, a reward model beside rule rewards, weights and a schedule
# ----------------------------------------------------------------------------------------------------------------------

SKEWED_TASKS = ["math"] * 5 + ["code"] + ["math"] * 9 + ["code"]  # 14 math prompts, 2 code prompts


@pytest.fixture(scope="module")
def balanced_run(tiny_model_dir, reward_model_dir, tmp_path_factory):
    reward_model = RewardModelReward(reward_model_dir, name="rm")

    def router(sample):
        return [reward_model, first_char_reward] if sample["task"] == "math" else [letter_fraction_reward]

    schedule = RewardSchedule([Stage(0, {"rm": 1.0}, name="warmup"), Stage(2, {"rm": 0.25}, name="main")])
    trainer, model = _trainer(
        tiny_model_dir, tmp_path_factory.mktemp("balanced"), [reward_model, first_char_reward, letter_fraction_reward],
        task_dataset(SKEWED_TASKS), max_steps=4, reward_weights=[1.0, 0.5, 1.0], reward_schedule=schedule,
        task_column="task", task_rewards=router, task_balance=True,
    )
    before = snapshot(model)
    batches = record_batches(trainer)
    trainer.train()
    return trainer, reward_model, batches, changed_parameters(model, before)


def test_task_balanced_sampler_is_wired_in_and_keeps_groups_intact(balanced_run):
    trainer, _, batches, _ = balanced_run
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, TaskBalancedSampler)
    assert (sampler.num_generations, sampler.batch_size, sampler.repeat_count) == (G, N // G, 1)
    group_tasks = []
    for batch in batches:
        for start in range(0, N, G):
            group = batch["inputs"][start:start + G]
            assert len({example["prompt"] for example in group}) == 1  # one prompt per group
            assert len({example["task"] for example in group}) == 1
            group_tasks.append(group[0]["task"])
    # 2 of 16 prompts are code, yet half of the 8 groups are: balanced, not proportional
    assert len(group_tasks) == 8 and group_tasks.count("code") == group_tasks.count("math") == 4


def test_reward_model_trains_beside_rule_rewards_with_routing_weights_and_schedule(balanced_run):
    trainer, reward_model, batches, (trainable, frozen) = balanced_run
    assert trainable and all("lora_" in name for name in trainable) and not frozen
    assert trainer.reward_func_names == ["rm", "first_char_reward", "letter_fraction_reward"]
    steps = _logged_steps(trainer)
    assert [entry["schedule/weight/rm"] for entry in steps] == [1.0, 1.0, 0.25, 0.25]
    assert [entry["schedule/weight/first_char_reward"] for entry in steps] == [0.5] * 4
    for entry, batch in zip(steps, batches):
        tasks = [example["task"] for example in batch["inputs"]]
        rewards = batch["rewards"]
        math_rows = [i for i, task in enumerate(tasks) if task == "math"]
        # the reward model scored exactly the math completions: logits[:, 0] of prompt + completion
        assert [not math.isnan(v) for v in rewards["rm"]] == [task == "math" for task in tasks]
        assert [not math.isnan(v) for v in rewards["letter_fraction_reward"]] == [task == "code" for task in tasks]
        texts = [batch["prompts"][i] + batch["completions"][i] for i in math_rows]
        expected_scores = reward_model.score_texts(texts).tolist()
        assert [rewards["rm"][i] for i in math_rows] == pytest.approx(expected_scores, rel=1e-5, abs=1e-6)
        weights = [entry["schedule/weight/rm"], 0.5, 1.0]
        total = _summed_rewards(batch, trainer.reward_func_names, weights)
        assert entry["reward"] == pytest.approx(total.mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Configuration errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["raise", "nan"])
def test_a_sample_of_an_unknown_task_stops_training_under_every_policy(policy, tiny_model_dir, tmp_path):
    trainer, _ = _trainer(tiny_model_dir, tmp_path, [letter_fraction_reward], task_dataset(["math", "poetry"]),
                          max_steps=1, task_column="task", reward_errors=policy, check_rewards="off",
                          task_rewards={"math": [first_char_reward], "code": [vowel_reward]})
    with pytest.raises(TaskRoutingError, match=r"sample [0-7] has task 'poetry', which route_rewards was not given; "
                                               r"known tasks: \['math', 'code'\]"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_task_without_reward_functions_is_rejected_at_construction(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="task 'code' has no reward functions"):
        _trainer(tiny_model_dir, tmp_path, None, task_dataset(["math", "code"]), task_column="task",
                 task_rewards={"math": [first_char_reward], "code": []})


def test_a_function_both_shared_and_routed_is_rejected(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"\['letter_fraction_reward'\] appear both in reward_funcs and in task_"):
        _trainer(tiny_model_dir, tmp_path, [letter_fraction_reward], task_dataset(["math", "code"]),
                 task_column="task", task_rewards={"math": [letter_fraction_reward], "code": [letter_fraction_reward]})


def test_a_routing_callable_needs_the_functions_it_chooses_from(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="pass the reward functions it chooses from as reward_funcs"):
        _trainer(tiny_model_dir, tmp_path, None, task_dataset(["math", "code"]), task_column="task",
                 task_rewards=lambda sample: [first_char_reward])


def test_normalization_without_task_labels_names_the_sample(tiny_model_dir, tmp_path):
    trainer, _ = _trainer(tiny_model_dir, tmp_path, [letter_fraction_reward], length_dataset(4), max_steps=1,
                          task_column="task", task_normalization="group", check_rewards="off")
    with pytest.raises(ValueError, match=r"task_column='task': sample 0 of the batch has no 'task' column"):
        trainer.train()
