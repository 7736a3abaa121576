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
