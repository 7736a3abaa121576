"""Two GRPO steps with a value head, its weights and value metrics written to JSON (the value DDP test's worker).

``torchrun --nproc_per_node 2 ddp_value_run.py OUT MODEL_DIR 4 KIND`` (each rank 4 completions) or
``python ddp_value_run.py OUT MODEL_DIR 8 KIND`` (one process, the same global batch). Completions come from a
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


def main(out: str, model_dir: str, per_device: int, kind: str) -> None:
    from datasets import Dataset

    import grpo_custom
    from grpo_custom.testing.cpu_logprob import use_torch_logprob_kernel

    use_torch_logprob_kernel()
    from tests.helpers import lora_model, pure_rollout

    model, tokenizer = lora_model(model_dir)  # seed 0, LoRA r 4 on q_proj / v_proj
    group = 4

    rollout = pure_rollout(tokenizer, group)

    def vowels(prompts, completions, **kwargs):
        return [sum(ch in "aeiou" for ch in c) / max(1, len(c)) + 0.1 * len(c) for c in completions]

    dataset = Dataset.from_dict({"prompt": [f"prompt number {i}:" for i in range(16)]})
    args = grpo_custom.GRPOConfig(
        output_dir=out, per_device_train_batch_size=per_device, num_generations=group, max_completion_length=16,
        max_steps=2, learning_rate=5e-2, logging_steps=1, report_to="none", bf16=False, use_cpu=True,
        gradient_checkpointing=False, save_strategy="no", seed=0, data_seed=0, disable_tqdm=True,
        dataloader_num_workers=0, check_rewards="off", beta=0.0,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        advantage_estimator="gae", advantage_estimator_kwargs={"lam": "adaptive"},
        value_function={"kind": kind, "lr": 0.01, "layers": [-1, 1]},
    )
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[vowels], args=args, train_dataset=dataset,
                                      processing_class=tokenizer, rollout_func=rollout)
    trainer.train()
    record = {
        "value_log": [{k: v for k, v in entry.items() if k.startswith("value/")} for entry in trainer.state.log_history],
        "head": {k: v.flatten().tolist() for k, v in trainer.grpo_custom.critic.head.state_dict().items()},
        "critic_adapter": {k: v.detach().flatten().tolist() for k, v in trainer.grpo_custom.critic.adapter_params.items()},
        "lora": {n: p.detach().flatten().tolist() for n, p in model.named_parameters() if p.requires_grad},
        "head_updates": trainer.grpo_custom.critic.optimizer.updates,
    }
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(out, f"record-{rank}.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    from tests.helpers import run_worker

    run_worker(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
