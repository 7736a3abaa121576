"""Train stock TRL, or the patched Unsloth trainer, on each metrics-parity configuration; write their log entries.

``python -m tests.unsloth.metrics_parity_scenarios trl|unsloth OUT.json``: ``trl`` runs stock TRL's
``GRPOTrainer`` (no Unsloth imported), ``unsloth`` runs ``grpo_custom.patch_unsloth()``'s compiled fork with
Unsloth's GPU code path on CPU (started by tests/unsloth/test_metrics_parity.py with the spoof variables).
Both train the same tiny LoRA model from the same seed on every configuration of :data:`CONFIGS`, and
write ``{config: [training log entries]}``.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile


def length_bonus(prompts, completions, **kwargs):
    """Completion length / 20: a second objective that varies on a random model's output."""
    return [len(c) / 20.0 for c in completions]


def _letters(prompts, completions, **kwargs):
    from tests.helpers import letter_fraction_reward

    return letter_fraction_reward(prompts, completions, **kwargs)


_letters.__name__ = "letter_fraction_reward"
TWO = ("letter_fraction_reward", "length_bonus")
# Options Unsloth's config would otherwise change (its defaults differ from TRL's): both sides run with these,
# so both generate and score the same first batch.
SAME = {"gradient_accumulation_steps": 2, "warmup_steps": 0, "weight_decay": 0.0, "beta": 0.0}

# name: (reward functions, TRL config overrides). Few steps and configurations: ~2 min on 2 cores for both sides.
CONFIGS = {
    "one_reward": (("letter_fraction_reward",), {}),
    "two_rewards_weighted_beta": (TWO, {"reward_weights": [0.7, 0.3], "beta": 0.04, "loss_type": "grpo"}),
    "entropy_bonus_and_mask": (("letter_fraction_reward",), {"entropy_coef": 0.01, "top_entropy_quantile": 0.5,
                                                            "loss_type": "bnpo"}),
    "dr_grpo_beta": (TWO, {"loss_type": "dr_grpo", "beta": 0.02}),
    "cispo": (("letter_fraction_reward",), {"loss_type": "cispo"}),
    "sapo": (("letter_fraction_reward",), {"loss_type": "sapo"}),
    "luspo": (("letter_fraction_reward",), {"loss_type": "luspo", "importance_sampling_level": "sequence"}),
    "vespo": (("letter_fraction_reward",), {"loss_type": "vespo"}),
}


def run(side: str) -> dict:
    import torch

    torch.set_num_threads(1)
    if side == "unsloth":
        import grpo_custom

        grpo_custom.patch_unsloth()
        trainer_class, config_class = grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig
        extra = {"check_rewards": "off"}
    else:
        import trl

        from grpo_custom.testing import use_torch_logprob_kernel

        use_torch_logprob_kernel()
        trainer_class, config_class, extra = trl.GRPOTrainer, trl.GRPOConfig, {}
    from grpo_custom.testing import length_dataset, save_tiny_model
    from tests.helpers import cpu_training_kwargs, lora_model

    functions = {"letter_fraction_reward": _letters, "length_bonus": length_bonus}
    results = {}
    with tempfile.TemporaryDirectory() as work:
        model_dir = str(save_tiny_model(os.path.join(work, "tiny")))
        for name, (reward_names, overrides) in CONFIGS.items():
            model, tokenizer = lora_model(model_dir)
            model.for_training = lambda *args, **kwargs: None  # Unsloth-loaded models have these
            model.for_inference = lambda *args, **kwargs: None
            args = config_class(**cpu_training_kwargs(os.path.join(work, name), **{**SAME, **overrides}, **extra))
            trainer = trainer_class(model=model, reward_funcs=[functions[n] for n in reward_names], args=args,
                                    train_dataset=length_dataset(16), processing_class=tokenizer)
            trainer.train()
            results[name] = [entry for entry in trainer.state.log_history if "loss" in entry]
    return results


if __name__ == "__main__":
    with open(sys.argv[2], "w") as handle:
        json.dump(run(sys.argv[1]), handle, indent=1)
