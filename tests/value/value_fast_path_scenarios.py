"""Train grpo-custom's trainer with a value function on TRL's path, or under ``patch_unsloth()``; write what to compare.

``python -m tests.value.value_fast_path_scenarios trl|unsloth OUT.json`` (started by
tests/value/test_value_fast_path.py; the ``unsloth`` side with Unsloth's GPU code path on CPU). Both sides train the
same tiny LoRA model from the same seed on every configuration of :data:`CONFIGS` and write, per configuration,
the value metrics of each step, the head's weights after the first step (both sides score the same first batch
with the same policy; later batches are sampled from policies that differ by round-off, so may differ in a token),
and how many grad-enabled forwards of the policy's decoder each training step ran.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

# Options Unsloth's config would otherwise change: both sides run with these.
SAME = {"gradient_accumulation_steps": 2, "warmup_steps": 0, "weight_decay": 0.0, "beta": 0.0, "loss_type": "grpo",
        "max_steps": 2, "check_rewards": "off"}
GAE = {"advantage_estimator": "gae", "advantage_estimator_kwargs": {"lam": 0.95}}
CONFIGS = {
    "no_critic": {"advantage_estimator": "rloo"},
    "head": {**GAE, "value_function": {"kind": "head", "lr": 0.05, "layers": [-1, 1]}},
    "shared_head": {**GAE, "value_function": {"kind": "shared_head", "lr": 0.05, "coef": 0.5}},
    "adapter": {**GAE, "value_function": {"kind": "adapter", "lr": 0.05, "adapter_lr": 0.01, "layers": [-1, 1]}},
}
VALUE_KEYS = ("value/loss", "value/clipfrac", "value/explained_variance", "value/mean", "value/returns_mean")


def run(side: str) -> dict:
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(1)
    import grpo_custom

    if side == "unsloth":
        grpo_custom.patch_unsloth()
    else:
        from grpo_custom.testing import use_torch_logprob_kernel

        use_torch_logprob_kernel()
    from grpo_custom.testing import length_dataset, save_tiny_model
    from grpo_custom.value.capture import decoder_of
    from tests.helpers import cpu_training_kwargs, letter_fraction_reward, lora_model

    results = {}
    with tempfile.TemporaryDirectory() as work:
        model_dir = str(save_tiny_model(os.path.join(work, "tiny")))
        for name, overrides in CONFIGS.items():
            model, tokenizer = lora_model(model_dir)
            model.for_training = lambda *args, **kwargs: None  # Unsloth-loaded models have these
            model.for_inference = lambda *args, **kwargs: None
            forwards = []
            decoder_of(model).register_forward_pre_hook(
                lambda *_: forwards.__setitem__(-1, forwards[-1] + 1) if torch.is_grad_enabled() else None)

            first_step = {}

            class CountPerStep(TrainerCallback):
                def on_step_begin(self, *args, **kwargs):
                    forwards.append(0)

                def on_step_end(self, args, state, control, **kwargs):
                    critic = trainer.grpo_custom.critic
                    if state.global_step == 1 and critic is not None:
                        first_step["head"] = [v.flatten().tolist() for v in critic.head.state_dict().values()]
                        first_step["adapter"] = [p.detach().flatten().tolist() for p in critic.adapter_params.values()]

            args = grpo_custom.GRPOConfig(**cpu_training_kwargs(os.path.join(work, name), **SAME, **overrides))
            trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[letter_fraction_reward], args=args,
                                              train_dataset=length_dataset(16), processing_class=tokenizer,
                                              callbacks=[CountPerStep()])
            if side == "unsloth":  # its loss without the 16-bit autocast (what it does for a float32 model on a GPU)
                trainer._autocast_enabled, trainer._autocast_dtype = False, torch.float16
            trainer.train()
            critic = trainer.grpo_custom.critic
            results[name] = {
                "trainer": type(trainer).__name__,
                "values": [{k: e[k] for k in VALUE_KEYS if k in e} for e in trainer.state.log_history if "loss" in e],
                "head_after_first_step": first_step.get("head"),
                "adapter_after_first_step": first_step.get("adapter"),
                "grad_forwards_per_step": forwards,
            }
    return results


if __name__ == "__main__":
    side, out = sys.argv[1], sys.argv[2]
    with open(out, "w") as handle:
        json.dump(run(side), handle)
