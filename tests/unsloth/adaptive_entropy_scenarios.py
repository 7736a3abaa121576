"""Train stock TRL, or the patched Unsloth trainer, with TRL's adaptive entropy controller; write what they log.

``python -m tests.unsloth.adaptive_entropy_scenarios trl|unsloth OUT.json``: ``trl`` runs stock TRL's
``GRPOTrainer`` (no Unsloth imported), ``unsloth`` runs ``grpo_custom.patch_unsloth()``'s compiled fork with
Unsloth's GPU code path on CPU (started by tests/unsloth/test_adaptive_entropy.py with the spoof variables).
Both train the same tiny LoRA model from the same seed with the user arguments of :data:`USER_ARGS` (no
``logging_steps``: TRL's default logs once at the end, Unsloth's rewritten default every step) and write the
log history and, after every optimizer step, the controller's state (``entropy_coef``, ``_last_world_entropy``).
The learning rate is 0, so both sides generate and score the same batches at every step.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

# Entropies of this tiny random policy on the length task sit near 4.33 nats: the target makes the controller
# both raise and lower the coefficient (the test checks both happened, with a margin to the target).
USER_ARGS = {"max_steps": 6, "gradient_accumulation_steps": 2, "learning_rate": 0.0, "warmup_steps": 0,
             "weight_decay": 0.0, "beta": 0.0, "entropy_coef": 0.01, "use_adaptive_entropy": True,
             "entropy_target": 4.335, "entropy_coef_delta": 0.004, "top_entropy_quantile": 1.0}


def run(side: str) -> dict:
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(1)
    if side == "unsloth":
        import grpo_custom

        grpo_custom.patch_unsloth()
        trainer_class, config_class, extra = grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, {"check_rewards": "off"}
    else:
        import trl

        from grpo_custom.testing import use_torch_logprob_kernel

        use_torch_logprob_kernel()
        trainer_class, config_class, extra = trl.GRPOTrainer, trl.GRPOConfig, {}
    from grpo_custom.testing import length_dataset, save_tiny_model
    from tests.helpers import cpu_training_kwargs, letter_fraction_reward, lora_model

    controller = []

    class RecordController(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            controller.append({"step": state.global_step, "entropy_coef": trainer.entropy_coef,
                               "last_world_entropy": trainer._last_world_entropy})

    with tempfile.TemporaryDirectory() as work:
        model, tokenizer = lora_model(str(save_tiny_model(os.path.join(work, "tiny"))))
        model.for_training = lambda *args, **kwargs: None  # Unsloth-loaded models have these
        model.for_inference = lambda *args, **kwargs: None
        kwargs = cpu_training_kwargs(os.path.join(work, "out"), **USER_ARGS)
        del kwargs["logging_steps"]  # the user's script does not set it
        trainer = trainer_class(model=model, reward_funcs=[letter_fraction_reward], args=config_class(**kwargs, **extra),
                                train_dataset=length_dataset(16), processing_class=tokenizer,
                                callbacks=[RecordController()])
        trainer.train()
        return {"log_history": trainer.state.log_history, "controller": controller,
                "logging_steps": trainer.args.logging_steps}


if __name__ == "__main__":
    with open(sys.argv[2], "w") as handle:
        json.dump(run(sys.argv[1]), handle, indent=1)
