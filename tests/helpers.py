"""Helpers for the trainer tests: CPU training arguments, models, rewards, parameter snapshots."""
from __future__ import annotations

import torch


def cpu_training_kwargs(output_dir: str, **overrides) -> dict:
    """GRPO arguments that run fast and deterministically on a 2-core CPU with the tiny model."""
    kwargs = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=12,
        max_steps=2,
        learning_rate=5e-2,
        logging_steps=1,
        report_to="none",
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        save_strategy="no",
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return kwargs


def letter_fraction_reward(prompts, completions, **kwargs):
    """Fraction of ASCII letters in each completion: varies on a random model's output."""
    return [sum(ch.isascii() and ch.isalpha() for ch in c) / max(len(c), 1) for c in completions]


def lora_model(model_dir: str, seed: int = 0):
    """The tiny model with a fresh LoRA adapter on its attention projections."""
    from peft import LoraConfig, get_peft_model

    from grpo_custom.testing.tiny_model import load_tiny_model

    torch.manual_seed(seed)
    model, tokenizer = load_tiny_model(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return get_peft_model(model, config), tokenizer


def snapshot(model) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter, by name."""
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def changed_parameters(model, before: dict[str, torch.Tensor]) -> tuple[set[str], set[str]]:
    """(names of trainable parameters that changed, names of frozen parameters that changed)."""
    trainable_changed, frozen_changed = set(), set()
    for name, param in model.named_parameters():
        if not torch.equal(param.detach(), before[name]):
            (trainable_changed if param.requires_grad else frozen_changed).add(name)
    return trainable_changed, frozen_changed


def pure_rollout(tokenizer, group: int):
    """A TRL ``rollout_func`` whose completion k of a prompt's group is (5 + 3k + len(prompt)) % 11 + 2 byte tokens
    (letters): a pure function of (prompt, index in its group), so one process and several score identical text."""

    def rollout(prompts, trainer):
        prompt_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        completion_ids = []
        for index, prompt in enumerate(prompts):
            k = index % group
            length = (5 + 3 * k + len(prompt)) % 11 + 2
            completion_ids.append([97 + (len(prompt) * 7 + k * 5 + t) % 26 for t in range(length)])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


def run_worker(main, *args) -> None:
    """Run a torchrun worker's ``main(*args)``, then destroy the default process group if one is up.

    A gloo process group left to the interpreter's exit can abort the process (SIGABRT, "terminate called without an
    active exception") after the work is done: its C++ threads outlive Python. Every multi-process test worker ends
    through here, so a finished run exits 0.
    """
    try:
        main(*args)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_side_scenario(module: str, side: str, work, *, packing: bool = False, timeout: int = 900) -> dict:
    """Run ``python -m MODULE SIDE OUT`` in a fresh interpreter and return the JSON it writes to OUT.

    ``side`` ``"unsloth"`` gets Unsloth's GPU code path on CPU (GUIDE §2: the spoof, no compile, a private compile
    location, prefix grouper off; sequence packing as ``packing`` says); any other side runs without Unsloth's
    variables. ``work`` (a folder) holds the fork cache, the compiled trainer and OUT. A failed run fails the test
    with the tail of its output."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    root, work = Path(__file__).resolve().parents[1], Path(work)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UNSLOTH_")},
           "PYTHONPATH": str(root), "GRPO_CUSTOM_CACHE_DIR": str(work / "fork_cache"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if side == "unsloth":
        env.update({"UNSLOTH_ALLOW_CPU": "1", "UNSLOTH_COMPILE_DISABLE": "1", "TORCHDYNAMO_DISABLE": "1",
                    "UNSLOTH_COMPILE_LOCATION": str(work / "compiled"),
                    "UNSLOTH_GRPO_SEQ_PACKING": "1" if packing else "0", "UNSLOTH_GRPO_PREFIX_GROUPER": "0"})
    out = work / f"{side}{'_packed' if packing else ''}.json"
    completed = subprocess.run([sys.executable, "-m", module, side, str(out)], cwd=root, env=env,
                               capture_output=True, text=True, timeout=timeout)
    if completed.returncode != 0:
        pytest.fail(f"{side} run failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-6000:]}")
    return json.loads(out.read_text())
