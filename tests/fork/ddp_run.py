"""Two GRPO steps with every batch statistic grpo-custom computes, written to JSON (the DDP test's worker).

Run as ``torchrun --nproc_per_node 2 ddp_run.py OUT MODEL_DIR RM_DIR 4`` (each rank 4 completions) or
``python ddp_run.py OUT MODEL_DIR RM_DIR 8`` (one process, the same global batch of 8). Completions come from a
``rollout_func`` that is a pure function of (prompt, index in its group), so both layouts score identical text.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


def main(out: str, model_dir: str, rm_dir: str, per_device: int) -> None:
    from datasets import Dataset

    import grpo_custom
    from grpo_custom.testing.cpu_logprob import use_torch_logprob_kernel
    from grpo_custom.rewards.reward_model import RewardModelReward

    use_torch_logprob_kernel()
    from tests.helpers import lora_model, pure_rollout

    model, tokenizer = lora_model(model_dir)  # seed 0, LoRA r 4 on q_proj / v_proj
    group = 4

    rollout = pure_rollout(tokenizer, group)

    def letters(prompts, completions, **kwargs):
        return [sum(ch in "aeiou" for ch in c) / max(1, len(c)) for c in completions]

    running = RewardModelReward(rm_dir, tokenizer=tokenizer, device="cpu", normalize="running", name="rm_running")
    batch = RewardModelReward(rm_dir, tokenizer=tokenizer, device="cpu", normalize="batch", name="rm_batch")
    dataset = Dataset.from_dict({"prompt": [f"prompt number {i}:" for i in range(16)], "task": ["a", "b"] * 8})
    args = grpo_custom.GRPOConfig(
        output_dir=out, per_device_train_batch_size=per_device, num_generations=group, max_completion_length=16,
        max_steps=2, learning_rate=5e-2, logging_steps=1, report_to="none", bf16=False, use_cpu=True,
        gradient_checkpointing=False, save_strategy="no", seed=0, data_seed=0, disable_tqdm=True,
        dataloader_num_workers=0, check_rewards="off", beta=0.0,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        task_column="task", task_normalization="running",
        regularizers=[{"name": "kl", "coef": 0.05}, {"name": "length", "coef": 0.1, "target": 6},
                      {"name": "entropy", "coef": 0.01}],
    )
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[letters, running, batch], args=args,
                                      train_dataset=dataset, processing_class=tokenizer, rollout_func=rollout)
    trainer.train()
    skip = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second")
    record = {
        "log_history": [{k: v for k, v in entry.items() if k not in skip} for entry in trainer.state.log_history],
        "rewards": {name: list(values) for name, values in trainer._logs["rewards"].items()},
        "advantages": list(trainer._logs["advantages"]),
        "completions": list(trainer._logs["completion"]),
        "task_normalizer": trainer.grpo_custom.task_normalizer.state_dict(),
        "rm_running": running.state_dict(),
    }
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(out, f"record-{rank}.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    from tests.helpers import run_worker

    run_worker(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
