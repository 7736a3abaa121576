"""A gated reward schedule under ``torchrun --nproc_per_node 2`` (the DDP gate test's worker; issue 23 part 2).

``torchrun --nproc_per_node 2 ddp_gate_run.py OUT MODEL_DIR``: 8 steps, an evaluation every 2. A callback that runs
before grpo-custom's adds ``eval_rank_value`` = step − 2 on rank 0 and step + 2 on rank 1 to each evaluation's
metrics: the gate ``eval_rank_value >= 5`` holds on rank 1 from step 4, on rank 0 from step 8, and on the mean
over processes (= step) from step 6. Each rank writes the step its gate opened and the stage of every batch.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


def main(out: str, model_dir: str) -> None:
    from transformers import TrainerCallback

    import grpo_custom
    from grpo_custom.testing.cpu_logprob import use_torch_logprob_kernel
    from grpo_custom.testing.length_task import length_dataset
    from tests.helpers import cpu_training_kwargs, letter_fraction_reward, lora_model

    use_torch_logprob_kernel()
    rank = int(os.environ.get("RANK", "0"))
    model, tokenizer = lora_model(model_dir)

    class RankValue(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics["eval_rank_value"] = float(state.global_step + (2 if rank == 1 else -2))

    def letters(prompts, completions, **kwargs):
        return letter_fraction_reward(prompts, completions)

    def length(prompts, completions, **kwargs):
        return [len(c) / 12.0 for c in completions]

    schedule = grpo_custom.RewardSchedule([
        grpo_custom.Stage(0, {"letters": 1.0, "length": 0.0}, name="warm"),
        grpo_custom.Stage(grpo_custom.Gate("eval_rank_value", ">=", 5.0), {"letters": 0.0, "length": 1.0},
                          name="strict"),
    ])
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(
        out, max_steps=8, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4, check_rewards="off",
        reward_schedule=schedule, ddp_backend="gloo"))
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[letters, length], args=args,
                                      train_dataset=length_dataset(16), eval_dataset=length_dataset(4),
                                      processing_class=tokenizer, callbacks=[RankValue()])
    trainer.train()
    record = {
        "starts": trainer.grpo_custom.curriculum.starts(),
        "stages": {entry["step"]: entry["schedule/stage"] for entry in trainer.state.log_history
                   if "schedule/stage" in entry},
        "eval_rewards": [entry["eval_rewards/letters/mean"] for entry in trainer.state.log_history
                         if "eval_rewards/letters/mean" in entry],
        "world_size": trainer.accelerator.num_processes,
    }
    with open(os.path.join(out, f"gate-{rank}.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    from tests.helpers import run_worker

    run_worker(main, sys.argv[1], sys.argv[2])
