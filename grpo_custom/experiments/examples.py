"""A ready ``make_trainer`` for the offline length task (tiny local model, no download): for the docs, the notebook,
the tests and a first ``grpo-custom compare`` / ``grpo-custom search`` run.

It shows the contract every ``make_trainer`` must keep: **the seed drives ``seed`` and ``data_seed`` of the config**
(TRL's GRPO sampler shuffles prompts with ``args.seed``, so every variant sees the same prompts in the same order
for one seed), the same training and evaluation data for every variant, ``output_dir`` passed through, and the
variant's overrides applied last over the defaults.
"""
from __future__ import annotations

TARGET_LENGTH = 8
TRAIN_PROMPTS = 64
EVAL_PROMPTS = 4
RESERVED = ("seed", "data_seed", "output_dir")


def length_task_defaults() -> dict:
    """The config the example starts from (the variants' overrides replace any of these).

    Small and fast on a CPU: 8 completions per step (4 per prompt), at most 16 tokens, 4 steps, a log every step,
    an evaluation on the 4 held-out prompts every 2 steps, constant learning rate 0.02 (large: tiny model).
    """
    import torch

    on_gpu = torch.cuda.is_available()
    return dict(
        max_steps=4, per_device_train_batch_size=8, num_generations=4, max_completion_length=16,
        per_device_eval_batch_size=8, eval_strategy="steps", eval_steps=2,
        learning_rate=0.02, lr_scheduler_type="constant", beta=0.0, logging_steps=1, report_to="none",
        save_strategy="no", bf16=on_gpu, use_cpu=not on_gpu, gradient_checkpointing=False, disable_tqdm=True,
        dataloader_num_workers=0, check_rewards="off",
    )


def length_task_trainer(overrides: dict, seed: int, output_dir: str):
    """Build a ``grpo_custom.GRPOTrainer`` on the offline length task for one run of ``compare``/``search``.

    Reward: ``length_reward(8, shape="neg_abs", scale=8)`` = -|len(completion) - 8| / 8 (0 is best). The tiny random
    Qwen2 base model (built with seed 0: the same environment for every run) gets a LoRA adapter initialised from
    ``seed``; training prompts ``length_dataset(64, seed=0)``, evaluation prompts ``length_dataset(4, seed=1)``.

    Args:
        overrides: ``GRPOConfig`` fields replacing :func:`length_task_defaults` (any grpo-custom option).
        seed: drives ``seed`` and ``data_seed`` (LoRA init, sampling, prompt order).
        output_dir: the run's folder.

    Raises:
        ValueError: ``overrides`` sets ``seed``, ``data_seed`` or ``output_dir`` (the experiment owns them).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from grpo_custom.rewards import length_reward
    from grpo_custom.testing import build_tiny_model, build_tiny_tokenizer, length_dataset, use_torch_logprob_kernel
    from grpo_custom.unsloth.trainer_classes import current_config_class, current_trainer_class

    reserved = sorted(set(overrides) & set(RESERVED))
    if reserved:
        raise ValueError(f"overrides set {reserved}: compare/search set seed, data_seed and output_dir themselves")
    if not torch.cuda.is_available():
        use_torch_logprob_kernel()  # TRL 1.15's log-prob kernel is Triton-only
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    args = current_config_class()(**{**length_task_defaults(), **overrides},
                                  seed=seed, data_seed=seed, output_dir=output_dir)
    return current_trainer_class()(
        model=model, processing_class=tokenizer, args=args,
        reward_funcs=[length_reward(TARGET_LENGTH, shape="neg_abs", scale=TARGET_LENGTH)],
        train_dataset=length_dataset(TRAIN_PROMPTS, seed=0), eval_dataset=length_dataset(EVAL_PROMPTS, seed=1))
