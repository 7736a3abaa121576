"""Token-level rewards: placement (lists, offset pairs), the guard's side record, the hook's [N, T] tensor, errors."""
from __future__ import annotations

import math
import re
import types

import pytest
import torch

from grpo_custom.algorithms.estimators import AdvantageInputs, call_estimator, get_advantage_estimator
from grpo_custom.algorithms.estimators.gae import compute_gae
from grpo_custom.algorithms.estimators.inputs import place_on_last_token
from grpo_custom.fork.hooks.token_rewards import gathered_token_rewards
from grpo_custom.rewards.guard import RewardFunctionError, guard_reward_function
from grpo_custom.rewards.token_rewards import TokenRewardRecorder, place_token_rewards, token_char_spans
from grpo_custom.testing.tiny_model import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()  # byte level: one token per byte


def ids_of(tokenizer, texts):
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def test_char_spans_follow_the_text_and_give_split_characters_to_the_completing_token(tokenizer):
    ids = ids_of(tokenizer, ["ab"])[0] + [tokenizer.eos_token_id]
    assert token_char_spans(ids, tokenizer) == [(0, 1), (1, 2), (2, 2)]  # the special token holds nothing
    ids = ids_of(tokenizer, ["h€x"])[0]  # € is three byte tokens
    assert token_char_spans(ids, tokenizer) == [(0, 1), (1, 1), (1, 1), (1, 2), (2, 3)]


def test_recorder_per_token_lists_and_steps(tokenizer):
    texts = ["abc", "h€x", "zz"]
    ids = ids_of(tokenizer, texts)
    recorder = TokenRewardRecorder("steps", ids, texts)
    assert recorder.accept(0, [0.5, 0.0, 1.0]) == (1.5, None)
    assert recorder.accept(1, [(1, 2.0), (2, -1.0), (0, 0.25), (2, 0.5)]) == (1.75, None)  # € then x (twice)
    assert recorder.accept(2, []) == (0.0, None)  # no steps
    placed = place_token_rewards(recorder.result(), 3, 6, tokenizer, dtype=torch.float64)
    expected = torch.zeros(3, 6, dtype=torch.float64)
    expected[0, :3] = torch.tensor([0.5, 0.0, 1.0])
    expected[1, 0], expected[1, 3], expected[1, 4] = 0.25, 2.0, -0.5  # € on the byte completing it
    assert torch.equal(placed, expected)


@pytest.mark.parametrize("value, kind, message", [
    ([1.0, 2.0], "wrong_length", r"'f' returned 2 token rewards at sample index 1, whose completion has 3 tokens"),
    ([1.0, math.nan, 0.0], "non_finite", r"sample index 1, token 1: nan"),
    ([1.0, "x", 0.0], "non_number", r"sample index 1, token 1: 'x'"),
    ([(7, 1.0)], "non_number", r"step reward at character 7 for sample index 1, whose completion text has 3"),
    ([(0.5, 1.0)], "non_number", r"bad step reward at sample index 1"),
])
def test_recorder_errors_name_function_and_sample(tokenizer, value, kind, message):
    texts = ["abc", "def"]
    recorder = TokenRewardRecorder("f", ids_of(tokenizer, texts), texts)
    assert recorder.accept(1, value) == (None, kind)
    assert re.search(message, recorder.problems[1])
    assert recorder.result() is None


def mixed_reward(prompts, completions, completion_ids=None, **kwargs):
    """Sample 0: per-token rewards; sample 1: outcome scalar; sample 2: steps; sample 3: a wrong length."""
    return [[1.0] * len(completion_ids[0]), 2.0, [(0, 0.5), (1, 0.5)], [1.0]]


def test_guard_gives_trl_sums_and_keeps_tokens_aside(tokenizer):
    texts = ["ab", "cde", "fg", "hij"]
    ids = ids_of(tokenizer, texts)
    guarded = guard_reward_function(mixed_reward, "mixed", policy="nan")
    with pytest.warns(UserWarning, match="wrong_length=1"):
        scalars = guarded(prompts=["p"] * 4, completions=texts, completion_ids=ids)
    assert scalars == [2.0, 2.0, 1.0, None]  # the bad sample alone becomes None; the rest of the batch is kept
    batch = guarded.token_level
    assert batch.function == "mixed" and sorted(batch.per_token) == [0] and sorted(batch.steps) == [2]
    strict = guard_reward_function(mixed_reward, "mixed", policy="raise")
    with pytest.raises(RewardFunctionError, match="'mixed' returned 1 token rewards at sample index 3"):
        strict(prompts=["p"] * 4, completions=texts, completion_ids=ids)
    scalar_only = guard_reward_function(lambda prompts, completions, **kw: [1.0] * 4, "scalar")
    scalar_only(prompts=["p"] * 4, completions=texts, completion_ids=ids)
    assert scalar_only.token_level is None


def fake_trainer(tokenizer, funcs, names):
    accelerator = types.SimpleNamespace(num_processes=1)
    return types.SimpleNamespace(reward_funcs=funcs, reward_func_names=names, accelerator=accelerator,
                                 processing_class=tokenizer)


def test_hook_builds_token_rewards_whose_rows_add_up_to_the_rewards(tokenizer):
    texts = ["ab", "cde", "fg", "hij"]
    ids = ids_of(tokenizer, texts)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]])
    tokens = guard_reward_function(lambda prompts, completions, completion_ids=None, **kw:
                                   [[0.1 * (k + 1) for k in range(len(c))] for c in completion_ids], "tokens")
    outcome = guard_reward_function(lambda prompts, completions, **kw: [1.0, 0.0, 1.0, math.nan], "outcome",
                                    policy="nan")
    with pytest.warns(UserWarning):
        per_func = torch.tensor([[float("nan") if x is None else x for x in f(prompts=["p"] * 4, completions=texts,
                                                                               completion_ids=ids)]
                                 for f in (tokens, outcome)], dtype=torch.float64).T  # [N, F]
    weights = torch.tensor([2.0, 0.5], dtype=torch.float64)
    rewards = (per_func * weights).nansum(1) - torch.tensor([0.0, 0.0, 0.25, 0.0], dtype=torch.float64)  # a penalty
    trainer = fake_trainer(tokenizer, [tokens, outcome], ["tokens", "outcome"])
    got, names = gathered_token_rewards(trainer, rewards=rewards, rewards_per_func=per_func, weights=weights,
                                        completion_mask=mask, full_mask=mask)
    assert names == ("tokens",)
    expected = torch.tensor([[0.2, 0.4 + 0.5, 0.0], [0.2, 0.4, 0.6], [0.2, 0.4 + 0.5 - 0.25, 0.0],
                             [0.2, 0.4, 0.6]], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.sum(1), rewards, rtol=0, atol=1e-12)
    assert tokens.token_level is None  # read once
    assert gathered_token_rewards(trainer, rewards=rewards, rewards_per_func=per_func, weights=weights,
                                  completion_mask=mask, full_mask=mask) == (None, ())


def token_inputs():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    token_rewards = torch.tensor([[0.5, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, -1.0],
                                  [3.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    return AdvantageInputs(rewards=token_rewards.sum(1), num_generations=2, completion_mask=mask,
                           completion_lengths=mask.sum(1), token_rewards=token_rewards,
                           token_reward_functions=("steps",)), mask


@pytest.mark.parametrize("name", ["grpo", "rloo", "dr_grpo", "gdpo"])
def test_sequence_estimators_refuse_token_rewards_naming_the_function(name):
    inputs, _ = token_inputs()
    with pytest.raises(ValueError, match=rf"Reward function 'steps' returned token-level rewards.*'{name}'"):
        call_estimator(get_advantage_estimator(name), inputs, {})
    with pytest.raises(ValueError, match="'reinforce_pp' uses only with gamma < 1"):
        call_estimator(get_advantage_estimator("reinforce_pp"), inputs, {})


def test_reinforce_pp_discounts_token_rewards_to_go():
    inputs, mask = token_inputs()
    got = call_estimator(get_advantage_estimator("reinforce_pp"), inputs, {"gamma": 0.5})
    returns = [[0.5 + 0.25, 0.5, 1.0], [1.0, 2.0], [1.0 + 0.5 + 0.25 - 0.125, 1.0 + 0.5 - 0.25, 0.5, -1.0], [3.0]]
    flat = [x for row in returns for x in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / (len(flat) - 1))
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for row, values in enumerate(returns):
        expected[row, : len(values)] = torch.tensor([(x - mean) / (std + 1e-4) for x in values], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=0)  # TRL's nanstd rounds n/(n − 1) to float32


def test_gae_uses_token_rewards():
    inputs, mask = token_inputs()
    inputs.values = torch.linspace(0, 1, 16, dtype=torch.float64).view(4, 4)
    got = call_estimator(get_advantage_estimator("gae"), inputs, {"gamma": 0.9, "lam": 0.8, "whiten": False})
    want, _ = compute_gae(inputs.token_rewards, inputs.values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(got, torch.where(mask.bool(), want, 0.0), rtol=0, atol=1e-14)
    outcome = AdvantageInputs(rewards=inputs.rewards, num_generations=2, completion_mask=mask, values=inputs.values)
    want, _ = compute_gae(place_on_last_token(inputs.rewards, mask), inputs.values, mask, gamma=0.9, lam=0.8)
    got = call_estimator(get_advantage_estimator("gae"), outcome, {"gamma": 0.9, "lam": 0.8, "whiten": False})
    torch.testing.assert_close(got, torch.where(mask.bool(), want, 0.0), rtol=0, atol=1e-14)


def per_token_reward(prompts, completions, completion_ids=None, **kwargs):
    """A token-level reward: (token id mod 7) / 7 on every completion token."""
    return [[(token % 7) / 7 for token in ids] for ids in completion_ids]


def _train_with_token_rewards(model_dir, tmp_path, record, **overrides):
    import grpo_custom
    from grpo_custom.testing.length_task import length_dataset
    from tests.helpers import cpu_training_kwargs, lora_model

    model, tokenizer = lora_model(model_dir)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(tmp_path), max_steps=1, check_rewards="off", **overrides))
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[per_token_reward], args=args,
                                      train_dataset=length_dataset(8), processing_class=tokenizer)
    generate = trainer._generate_and_score_completions

    def recording(inputs):
        output = generate(inputs)
        record.append(output)
        return output

    trainer._generate_and_score_completions = recording
    trainer.train()
    return trainer


def test_trainer_feeds_token_rewards_to_reinforce_pp(tiny_model_dir, tmp_path):
    record = []
    _train_with_token_rewards(tiny_model_dir, tmp_path, record, advantage_estimator="reinforce_pp",
                              advantage_estimator_kwargs={"gamma": 0.9})
    output = record[0]
    ids, mask = output["completion_ids"], output["completion_mask"]
    token_rewards = torch.where(mask.bool(), (ids % 7).double() / 7, 0.0)  # [B, T], computed independently
    inputs = AdvantageInputs(rewards=token_rewards.sum(1), num_generations=4, completion_mask=mask,
                             token_rewards=token_rewards, token_reward_functions=("per_token_reward",))
    expected = call_estimator(get_advantage_estimator("reinforce_pp"), inputs, {"gamma": 0.9})
    torch.testing.assert_close(output["advantages"].double(), expected, rtol=1e-5, atol=1e-5)
    assert output["advantages"].dim() == 2 and bool((output["advantages"] != 0).any())


def test_trainer_refuses_token_rewards_for_a_sequence_estimator(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"Reward function 'per_token_reward' returned token-level rewards.*'grpo'"):
        _train_with_token_rewards(tiny_model_dir, tmp_path, [], advantage_estimator="grpo")
