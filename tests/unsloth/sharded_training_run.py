"""Two GRPO steps through Unsloth's generated trainer with grpo-custom's features on, written to JSON (the worker of
test_sharded_training.py).

``torchrun --nproc_per_node 2 sharded_training_run.py OUT MODEL_DIR 4 [VARIANT]`` with ``UNSLOTH_FSDP2=1`` trains
through Unsloth's native FSDP2 (it shards the model itself on a CPU gloo mesh for ``use_cpu=True``), without it
through Unsloth's DDP; ``python sharded_training_run.py OUT MODEL_DIR 8 [VARIANT]`` is one process on the same
global batch. VARIANT: ``features`` (default: grpo-custom with its features on), ``default`` (grpo-custom, default
settings) or ``stock`` (stock Unsloth: ``trl.GRPOTrainer`` as Unsloth rewrites it, ``patch_unsloth`` never called).
``SHARDED_RUN_BETA`` sets β (default 0); ``SHARDED_RUN_REGULARIZERS`` keeps a comma-separated subset of the
``features`` regularizers (for bisecting).
Needs Unsloth's CPU spoof (``UNSLOTH_ALLOW_CPU=1``, GUIDE §2). Completions come from a ``rollout_func`` that is a
pure function of (prompt, index in its group), so every layout scores the same text.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
GROUP = 4


def main(out: str, model_dir: str, per_device: int, variant: str = "features") -> None:
    import unsloth  # noqa: F401  (first, as on a GPU)
    from unsloth.models.rl import _patch_trl_rl_trainers

    _patch_trl_rl_trainers("grpo_trainer")  # what `import unsloth` does at import time on a GPU
    if variant == "stock":  # stock Unsloth: TRL's trainer as Unsloth rewrote it, grpo_custom never patched in
        import trl

        config_class, trainer_class = trl.GRPOConfig, trl.GRPOTrainer
    else:
        import grpo_custom

        grpo_custom.patch_unsloth()
        config_class, trainer_class = grpo_custom.GRPOConfig, grpo_custom.GRPOTrainer
    from datasets import Dataset

    from tests.helpers import lora_model

    model, tokenizer = lora_model(model_dir, seed=0)
    model.for_training = lambda *args, **kwargs: None  # Unsloth-loaded models have these
    model.for_inference = lambda *args, **kwargs: None

    from tests.helpers import pure_rollout

    rollout = pure_rollout(tokenizer, GROUP)

    def distinct(prompts, completions, **kwargs):
        return [len(set(completion)) / max(1, len(completion)) for completion in completions]

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dataset = Dataset.from_dict({"prompt": [f"prompt number {i}:" for i in range(16)], "task": ["a", "b"] * 8})
    common = dict(
        output_dir=out, per_device_train_batch_size=per_device, num_generations=GROUP, max_completion_length=16,
        max_steps=2, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", logging_steps=1,
        report_to="none", bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, save_strategy="no",
        seed=0, data_seed=0, disable_tqdm=True, dataloader_num_workers=0,
        beta=float(os.environ.get("SHARDED_RUN_BETA", "0")),
        ddp_backend="gloo" if world > 1 else None,
    )
    features = dict(
        advantage_estimator="rloo", task_column="task", task_normalization="running",
        regularizers=[{"name": "lora_l2", "coef": lambda step: 0.01 * (step + 1)},  # a scheduled coefficient
                      {"name": "kl", "coef": 0.05}, {"name": "entropy", "coef": 0.01},
                      {"name": "length", "coef": 0.1, "target": 6}],
    )
    only = os.environ.get("SHARDED_RUN_REGULARIZERS")  # bisecting: a comma-separated subset of the regularizers
    if only is not None:
        features["regularizers"] = [r for r in features["regularizers"] if r["name"] in only.split(",")]
    if variant == "stock":
        args = config_class(**common)
    elif variant == "default":
        args = config_class(**common, check_rewards="off")
    else:
        args = config_class(**common, check_rewards="off", **features)
    trainer = trainer_class(model=model, reward_funcs=[distinct], args=args, train_dataset=dataset,
                                      processing_class=tokenizer, rollout_func=rollout)
    sharded = type(next(p for p in trainer.model.parameters() if p.requires_grad)).__name__
    trainer.train()
    skip = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second")
    weights = {}
    for name, parameter in trainer.model.named_parameters():
        if "lora_" in name:  # every adapter weight, whatever its requires_grad flag says now
            whole = parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter
            weights[name] = whole.detach().flatten().tolist()
    record = {
        "parameter_type": sharded,
        "log_history": [{k: v for k, v in entry.items() if k not in skip} for entry in trainer.state.log_history],
        "grpo_custom_patched": "grpo_custom.unsloth.patch" in sys.modules or hasattr(trainer, "grpo_custom"),
        "task_normalizer": trainer.grpo_custom.task_normalizer.state_dict() if variant == "features" else None,
        "weights": weights,
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"record-{os.environ.get('RANK', '0')}.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    from tests.helpers import run_worker

    run_worker(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
