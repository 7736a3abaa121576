"""Tool output inside completions (TRL's ``tool_mask``, from a rollout_func's ``env_mask``) is skipped by GAE.

A rollout_func returns completions whose tokens 2..4 are marked 0 in ``env_mask`` (TRL's way for an environment's
text inside a completion; it becomes ``tool_mask``). The trainer's advantages and the critic's returns must equal
``compute_gae`` on ``completion_mask * tool_mask``, computed here independently from the batch TRL returns.
"""
from __future__ import annotations

import torch

import grpo_custom
from grpo_custom.algorithms.estimators.gae import compute_gae
from grpo_custom.testing.length_task import length_dataset
from grpo_custom.value.critic import OLD_VALUES_KEY, RETURNS_KEY
from tests.helpers import cpu_training_kwargs, letter_fraction_reward, lora_model, pure_rollout

TOOL_TOKENS = slice(2, 5)  # positions a "tool" wrote, inside every completion longer than 6 tokens


def test_gae_skips_tool_tokens_like_the_reference(tiny_model_dir, tmp_path):
    model, tokenizer = lora_model(tiny_model_dir)
    generate = pure_rollout(tokenizer, group=4)

    def rollout_with_tool_output(prompts, trainer):
        output = generate(prompts, trainer)
        masks = []
        for ids in output["completion_ids"]:
            mask = [1] * len(ids)
            if len(ids) > 6:
                mask[TOOL_TOKENS] = [0] * len(mask[TOOL_TOKENS])
            masks.append(mask)
        return {**output, "env_mask": masks}

    rewards_seen = []

    def reward(prompts, completions, **kwargs):
        values = letter_fraction_reward(prompts, completions)
        values = [v + 0.1 * len(c) for v, c in zip(values, completions)]  # differ within a group
        rewards_seen.append(torch.tensor(values))
        return values

    gamma, lam, critic_lam = 0.9, 0.8, 0.7
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(
        str(tmp_path), max_steps=1, check_rewards="off", advantage_estimator="gae",
        advantage_estimator_kwargs={"gamma": gamma, "lam": lam}, value_function={"lr": 0.05, "lam": critic_lam}))
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[reward], args=args, processing_class=tokenizer,
                                      train_dataset=length_dataset(16), rollout_func=rollout_with_tool_output)
    from grpo_custom.value.critic import critic_of

    head = critic_of(trainer).head.linear  # built on first use
    with torch.no_grad():  # non-zero values, so the carried next value matters
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
        head.bias.fill_(0.3)
    trainer.model.train()
    batch = trainer._generate_and_score_completions([{"prompt": row["prompt"]} for row in length_dataset(4)])

    completion_mask, tool_mask = batch["completion_mask"], batch["tool_mask"]
    scored = (completion_mask * tool_mask).bool()  # [B, T]
    assert (~tool_mask.bool() & completion_mask.bool()).any()  # some tool tokens inside completions
    values = batch[OLD_VALUES_KEY].float()
    assert values[scored].abs().min() > 0
    rewards = rewards_seen[-1].float()
    last = torch.where(scored, torch.arange(scored.shape[1]), -1).max(dim=1).values  # last scored token
    token_rewards = torch.zeros_like(values)
    token_rewards[torch.arange(len(rewards)), last] = rewards
    want, _ = compute_gae(token_rewards, values, scored, gamma=gamma, lam=lam, whiten=True, process_sum=None)
    torch.testing.assert_close(batch["advantages"], torch.where(scored, want, 0.0), rtol=1e-5, atol=1e-5)
    _, want_returns = compute_gae(token_rewards, values, scored, gamma=gamma, lam=critic_lam, process_sum=None)
    torch.testing.assert_close(batch[RETURNS_KEY][scored], want_returns[scored], rtol=1e-5, atol=1e-5)
    # with the completion mask alone the tool tokens would be scored: a different answer
    unskipped, _ = compute_gae(token_rewards, values, completion_mask.bool(), gamma=gamma, lam=lam, whiten=True,
                               process_sum=None)
    assert not torch.allclose(batch["advantages"][scored], unskipped[scored], atol=1e-3)
