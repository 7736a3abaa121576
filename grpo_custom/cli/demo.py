"""``grpo-custom demo``: GRPO on the toy length-control task.

On a CPU (or without ``--model``) it trains a LoRA adapter on the offline tiny model built
locally (no download). With ``--model NAME`` on a CUDA GPU with Unsloth installed, the same task
runs through Unsloth (4-bit base, LoRA) with grpo-custom's patch applied. The reward is
``-|target - len(completion)|``: correctly signed, since GRPO maximizes reward.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TARGET_LENGTH = 8


@dataclass
class DemoResult:
    """Mean reward of the first and last logged steps, and where the outputs went."""

    first_reward: float
    last_reward: float
    rewards: list[float]
    curve_path: Path
    log_path: Path


def _window_mean(values: list[float], size: int) -> float:
    window = values[:size]
    return sum(window) / len(window)


def save_reward_curve(rewards: list[float], path: Path, title: str) -> Path:
    """Plot reward per step to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(range(1, len(rewards) + 1), rewards, marker=".")
    axis.set_xlabel("step")
    axis.set_ylabel("mean reward")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def demo_training_arguments(output_dir: str, steps: int, estimator: str, seed: int, on_gpu: bool) -> dict:
    """The GRPO arguments of the demo (small and fast on CPU, logged every step)."""
    return dict(
        output_dir=output_dir,
        advantage_estimator=estimator,
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=16,
        max_steps=steps,
        learning_rate=0.02 if not on_gpu else 5e-5,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to="none",
        bf16=on_gpu,
        gradient_checkpointing=False,
        use_cpu=not on_gpu,
        save_strategy="no",
        seed=seed,
        beta=0.0,
    )


def _tiny_lora_model(output_dir: Path, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model

    from grpo_custom.testing.tiny_model import load_tiny_model, save_tiny_model

    model_dir = save_tiny_model(output_dir / "tiny_model", seed=seed)
    model, tokenizer = load_tiny_model(model_dir)
    torch.manual_seed(seed)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(model, lora), tokenizer


def _unsloth_lora_model(model_name: str):
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"--model {model_name} runs through Unsloth and needs a CUDA GPU; none is available.")
    from grpo_custom.unsloth.patch import patch_unsloth

    patch_unsloth()
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(model_name, max_seq_length=512, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return model, tokenizer


def run_demo(estimator: str = "grpo", steps: int = 60, output_dir: str = "grpo_custom_demo",
             model_name: str | None = None, seed: int = 0) -> DemoResult:
    """Train the length-control task and report the first/last mean rewards and the reward curve."""
    import torch

    from grpo_custom.rewards.builtin import length_reward
    from grpo_custom.testing.length_task import length_dataset

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    on_gpu = model_name is not None
    if on_gpu:
        model, tokenizer = _unsloth_lora_model(model_name)
    else:
        if not torch.cuda.is_available():
            from grpo_custom.testing.cpu_logprob import use_torch_logprob_kernel

            use_torch_logprob_kernel()
        model, tokenizer = _tiny_lora_model(out, seed)

    from grpo_custom.unsloth.trainer_classes import current_config_class, current_trainer_class

    config = current_config_class()(**demo_training_arguments(str(out), steps, estimator, seed, on_gpu))
    trainer = current_trainer_class()(
        model=model,
        reward_funcs=[length_reward(TARGET_LENGTH, shape="neg_abs")],
        args=config,
        train_dataset=length_dataset(256, seed=seed),
        processing_class=tokenizer,
    )
    trainer.train()

    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    window = max(1, min(10, len(rewards) // 4))
    result = DemoResult(
        first_reward=_window_mean(rewards, window),
        last_reward=_window_mean(rewards[::-1], window),
        rewards=rewards,
        curve_path=save_reward_curve(rewards, out / "reward_curve.png",
                                     f"length control (target {TARGET_LENGTH} chars), estimator {estimator}"),
        log_path=out / "log_history.json",
    )
    result.log_path.write_text(json.dumps(trainer.state.log_history, indent=1))
    print(f"mean reward, first {window} steps: {result.first_reward:.3f}")
    print(f"mean reward, last {window} steps:  {result.last_reward:.3f}")
    print(f"reward curve: {result.curve_path}")
    return result
