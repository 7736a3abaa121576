"""``value/explained_variance`` is undefined when every completion gets the same reward: not logged, never huge."""
from __future__ import annotations

import grpo_custom
from grpo_custom.testing.length_task import length_dataset
from tests.helpers import cpu_training_kwargs, lora_model


def same_reward(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def test_constant_returns_log_no_explained_variance(tiny_model_dir, tmp_path):
    model, tokenizer = lora_model(tiny_model_dir)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(
        str(tmp_path), max_steps=2, check_rewards="off", advantage_estimator="gae",
        value_function={"lr": 0.05}))  # γ = 1 and the critic's λ = 1: R_t = 1 on every scored token
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[same_reward], args=args, processing_class=tokenizer,
                                      train_dataset=length_dataset(16))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "value/loss" in entry]
    assert len(logged) == 2
    assert logged[1]["value/mean"] != 0.0  # step 2's V_old is not 0: R = (1 − V) + V is constant up to round-off
    for entry in logged:
        assert entry["value/returns_mean"] == 1.0 or abs(entry["value/returns_mean"] - 1.0) < 1e-6
        assert "value/explained_variance" not in entry  # undefined: was −Var(V)/1e-8 before
