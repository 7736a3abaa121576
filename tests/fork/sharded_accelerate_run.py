"""Two GRPO steps on the TRL path (no Unsloth) with ``lora_l2``, written to JSON: the GPU check's single-GPU
ZeRO-3 / FSDP2 run (tests/fork/test_sharding.py::test_single_gpu_zero3_and_fsdp2_train_like_one_process).

``accelerate launch --config_file accelerate_configs/zero3.yaml --num_processes 1 sharded_accelerate_run.py OUT MODEL``
(or ``fsdp2.yaml``) trains through accelerate's engine at world size 1, which still shards the parameter types
(ZeRO-3 partitions, FSDP2 DTensors); ``python sharded_accelerate_run.py OUT MODEL`` is the unsharded reference.
Completions come from a ``rollout_func`` that is a pure function of (prompt, index in its group).
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main(out: str, model_dir: str) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model

    import grpo_custom
    from grpo_custom.algorithms.sharding import is_dtensor, is_zero3_parameter
    from grpo_custom.testing.tiny_model import load_tiny_model

    if not torch.cuda.is_available():
        from grpo_custom.testing.cpu_logprob import use_torch_logprob_kernel

        use_torch_logprob_kernel()
    torch.manual_seed(0)
    model, tokenizer = load_tiny_model(model_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.0, init_lora_weights=False))

    def rollout(prompts, trainer):
        prompt_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        completion_ids = [[97 + (len(prompt) * 7 + (i % 4) * 5 + t) % 26 for t in range((5 + 3 * (i % 4)) % 11 + 2)]
                          for i, prompt in enumerate(prompts)]
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    def distinct(prompts, completions, **kwargs):
        return [len(set(completion)) / max(1, len(completion)) for completion in completions]

    args = grpo_custom.GRPOConfig(
        output_dir=out, per_device_train_batch_size=8, num_generations=4, max_completion_length=16, max_steps=2,
        learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", logging_steps=1, report_to="none",
        bf16=False, fp16=False, gradient_checkpointing=False, save_strategy="no", seed=0, data_seed=0,
        disable_tqdm=True, dataloader_num_workers=0, check_rewards="off", beta=0.0, advantage_estimator="rloo",
        regularizers=[{"name": "lora_l2", "coef": 0.01}])
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[distinct], args=args, processing_class=tokenizer,
                                      train_dataset=Dataset.from_dict({"prompt": [f"prompt {i}:" for i in range(16)]}),
                                      rollout_func=rollout)
    trainer.train()
    trainable = [p for p in trainer.model_wrapped.parameters() if p.requires_grad]
    record = {
        "engine": trainer.accelerator.distributed_type.name,
        "sharded": "DTensor" if any(is_dtensor(p) for p in trainable)
        else "ZeRO-3" if any(is_zero3_parameter(p) for p in trainable) else "none",
        "log_history": [{k: v for k, v in entry.items() if isinstance(v, (int, float))}
                        for entry in trainer.state.log_history],
    }
    with open(os.path.join(out, "record.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
