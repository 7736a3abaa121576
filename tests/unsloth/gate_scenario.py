"""A gated reward schedule through ``patch_unsloth()``'s compiled trainer, Unsloth's GPU code path on CPU (issue 23).

``python -m tests.unsloth.gate_scenario OUT.json`` (started by tests/unsloth/test_gates_unsloth.py with the spoof
variables): 6 steps, an evaluation every 2; ``progress`` scores every completion with the optimizer step, so the
evaluation at step N logs ``eval_rewards/progress/mean == N`` and the gate ``>= 3`` opens at step 4. Writes the
opened steps, the training log entries and the stage summaries.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile


def progress(prompts, completions, trainer_state=None, **kwargs):
    return [float(trainer_state.global_step)] * len(completions)


def main(out: str) -> None:
    import torch

    torch.set_num_threads(1)
    import grpo_custom
    from grpo_custom.testing.length_task import length_dataset
    from grpo_custom.testing.tiny_model import save_tiny_model
    from tests.helpers import cpu_training_kwargs, letter_fraction_reward
    from tests.unsloth_scenarios import _tiny

    def letters(prompts, completions, **kwargs):
        return letter_fraction_reward(prompts, completions)

    schedule = grpo_custom.RewardSchedule([
        grpo_custom.Stage(0, {"progress": 1.0, "letters": 0.0}, name="warm"),
        grpo_custom.Stage(grpo_custom.Gate("eval_rewards/progress/mean", ">=", 3.0), {"progress": 0.0, "letters": 1.0},
                          name="strict"),
    ])
    kl = grpo_custom.Schedule.after_stage("strict", grpo_custom.Schedule.linear(0.0, 0.2, 0, 2))
    with tempfile.TemporaryDirectory() as work, grpo_custom.patch_unsloth():
        model, tokenizer = _tiny(str(save_tiny_model(os.path.join(work, "tiny"))))
        args = grpo_custom.GRPOConfig(**cpu_training_kwargs(
            os.path.join(work, "out"), max_steps=6, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4,
            check_rewards="off", reward_schedule=schedule, regularizers=[{"name": "kl", "coef": kl}], beta=0.0))
        trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[progress, letters], args=args,
                                          train_dataset=length_dataset(16), eval_dataset=length_dataset(4),
                                          processing_class=tokenizer)
        trainer.train()
        folder = os.path.join(work, "out", "reward_stages")
        result = {
            "trainer_class": type(trainer).__name__,
            "starts": trainer.grpo_custom.curriculum.starts(),
            "entries": [entry for entry in trainer.state.log_history if "schedule/stage" in entry],
            "summaries": sorted(os.listdir(folder)),
        }
    with open(out, "w") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
