"""``grpo-custom demo``: GRPO on the toy length-control task, with a readable console.

On a CPU (or without ``--model``) it trains a LoRA adapter on the offline tiny model built locally
(no download). With ``--model NAME`` on a CUDA GPU with Unsloth installed, the same task runs through
Unsloth (4-bit base, LoRA) with grpo-custom's patch applied. The reward is ``-|target - len(completion)|``:
correctly signed, since GRPO maximizes reward. The console shows a progress bar, a compact line every
``log_every`` steps, sample completions at the start and the end, and a summary; every logged step goes
in full to ``<output-dir>/log_history.jsonl``.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

TARGET_LENGTH = 8
SAMPLES_SHOWN = 3


class DemoError(RuntimeError):
    """A user mistake the command line reports in one line (no traceback)."""


@dataclass
class DemoResult:
    """Mean reward of the first and last logged steps, and where the outputs went."""

    first_reward: float
    last_reward: float
    rewards: list[float]
    curve_path: Path
    log_path: Path
    steps_log_path: Path


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


def demo_training_arguments(output_dir: str, steps: int, estimator: str, seed: int, on_gpu: bool,
                            learning_rate: float | None = None) -> dict:
    """The GRPO arguments of the demo (small and fast on CPU, logged every step, no console dicts).

    ``learning_rate`` overrides the demo's (0.02 on the tiny model, 5e-5 through Unsloth); 0 makes a
    no-learning control run.
    """
    return dict(
        output_dir=output_dir,
        advantage_estimator=estimator,
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=16,
        max_steps=steps,
        learning_rate=learning_rate if learning_rate is not None else 0.02 if not on_gpu else 5e-5,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to="none",
        bf16=on_gpu,
        gradient_checkpointing=False,
        use_cpu=not on_gpu,
        save_strategy="no",
        seed=seed,
        beta=0.0,
        disable_tqdm=True,  # the demo draws its own progress bar
        **(GAE_OPTIONS if estimator == "gae" else {}),
    )


# ``--estimator gae``: a value head on the policy's last hidden state (docs/value_function.md), VC-PPO's
# decoupled λ (critic 1.0, policy 0.95) and a head learning rate for the tiny model.
GAE_OPTIONS = {"advantage_estimator_kwargs": {"lam": 0.95}, "value_function": {"kind": "head", "lr": 0.01}}


def check_demo_options(estimator: str, steps: int, model_name: str | None) -> None:
    """Raise :class:`DemoError` for options that cannot run here, before anything heavy is loaded."""
    from grpo_custom.algorithms.estimators import list_advantage_estimators

    if estimator not in list_advantage_estimators():
        raise DemoError(f"unknown estimator {estimator!r}; choose one of {', '.join(list_advantage_estimators())}")
    if steps < 1:
        raise DemoError(f"--steps must be at least 1, got {steps}")
    if model_name is not None:
        import torch

        if not torch.cuda.is_available():
            raise DemoError(f"--model {model_name} runs through Unsloth and needs a CUDA GPU; none is available "
                            "(without --model the demo trains the built-in tiny model on this CPU)")


def _compact(entry: dict, step: int, max_steps: int) -> str:
    """One console line for a logged step: reward, completion length, KL, advantage spread."""
    kl = entry.get("kl", entry.get("regularizers/kl/value"))
    parts = [f"step {step:>4}/{max_steps}", f"reward {entry.get('reward', float('nan')):8.3f}",
             f"length {entry.get('completions/mean_length', float('nan')):5.1f}",
             "kl " + ("     -" if kl is None else f"{kl:.4f}"),
             f"adv std {entry.get('advantages/std', float('nan')):.3f}"]
    return "  ".join(parts)


def _console_callback(trainer, log_every: int, steps_log_path: Path, stream):
    """A callback drawing the progress bar, the compact lines and the samples, and writing every step's log."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class DemoConsole(TrainerCallback):
        def __init__(self):
            self.bar = None
            self.samples_shown = False
            steps_log_path.write_text("")

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=state.max_steps, desc="training", unit="step", file=stream, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            with steps_log_path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")
            if "reward" not in logs:
                return
            if not self.samples_shown:
                self.samples_shown = True
                self.bar.write(format_samples(trainer, "sample completions at the start"))
            if state.global_step % log_every == 0 or state.global_step == state.max_steps:
                self.bar.write(_compact(logs, state.global_step, state.max_steps))

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return DemoConsole()


def format_samples(trainer, title: str) -> str:
    """The last generated completions with their rewards, from the trainer's completions table."""
    logs = getattr(trainer, "_logs", {})
    completions = list(logs.get("completion", []))[-SAMPLES_SHOWN:]
    rewards = {name: list(values)[-SAMPLES_SHOWN:] for name, values in logs.get("rewards", {}).items()}
    lines = [f"{title} (target {TARGET_LENGTH} characters):"]
    for index, completion in enumerate(completions):
        text = completion if isinstance(completion, str) else str(completion)
        scores = ", ".join(f"{name} {values[index]:.2f}" for name, values in rewards.items() if index < len(values))
        lines.append(f"  {text!r:<40} len {len(text):>3}  {scores}")
    return "\n".join(lines)


def _tiny_lora_model(output_dir: Path, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model

    from grpo_custom.testing import load_tiny_model, save_tiny_model

    model_dir = save_tiny_model(output_dir / "tiny_model", seed=seed)
    model, tokenizer = load_tiny_model(model_dir)
    torch.manual_seed(seed)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(model, lora), tokenizer


def _unsloth_lora_model(model_name: str):
    from grpo_custom.unsloth.patch import patch_unsloth

    patch_unsloth()
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(model_name, max_seq_length=512, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return model, tokenizer


def build_demo_trainer(output_dir: str, steps: int, estimator: str = "grpo", model_name: str | None = None,
                       seed: int = 0, learning_rate: float | None = None, **overrides):
    """The demo's trainer, not yet trained: its model (the tiny LoRA model on a CPU, Unsloth's with ``model_name``),
    its length reward ``-|TARGET_LENGTH - len(completion)|``, its prompts and :func:`demo_training_arguments`, whose
    entries ``overrides`` replace (e.g. ``value_function`` or ``advantage_estimator_kwargs``; the value learning
    test runs the demo's task this way). ``output_dir`` is created.

    Raises:
        TypeError / ValueError: from the config class, naming an override that is not one of its options or a bad
            value.
    """
    import torch

    from grpo_custom.rewards.builtin import length_reward
    from grpo_custom.testing import length_dataset

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    on_gpu = model_name is not None
    if on_gpu:
        model, tokenizer = _unsloth_lora_model(model_name)
    else:
        if not torch.cuda.is_available():
            from grpo_custom.testing import use_torch_logprob_kernel

            use_torch_logprob_kernel()
        model, tokenizer = _tiny_lora_model(out, seed)

    from grpo_custom.unsloth.trainer_classes import current_config_class, current_trainer_class

    arguments = demo_training_arguments(str(out), steps, estimator, seed, on_gpu, learning_rate)
    config = current_config_class()(**{**arguments, **overrides})
    return current_trainer_class()(
        model=model,
        reward_funcs=[length_reward(TARGET_LENGTH, shape="neg_abs")],
        args=config,
        train_dataset=length_dataset(256, seed=seed),
        processing_class=tokenizer,
    )


def run_demo(estimator: str = "grpo", steps: int = 60, output_dir: str = "grpo_custom_demo",
             model_name: str | None = None, seed: int = 0, log_every: int = 10, stream=None,
             learning_rate: float | None = None) -> DemoResult:
    """Train the length-control task; print progress, samples and a summary; save the logs and the reward curve.

    Raises :class:`DemoError` for an unknown estimator, ``steps < 1`` or ``model_name`` without a CUDA GPU.
    """
    check_demo_options(estimator, steps, model_name)
    stream = stream or sys.stdout
    from transformers import PrinterCallback, ProgressCallback

    out = Path(output_dir)
    trainer = build_demo_trainer(str(out), steps, estimator, model_name, seed, learning_rate)
    for noisy in (PrinterCallback, ProgressCallback):  # they print every log dict
        trainer.remove_callback(noisy)
    steps_log_path = out / "log_history.jsonl"
    trainer.add_callback(_console_callback(trainer, max(1, log_every), steps_log_path, stream))
    print(f"grpo-custom demo: {steps} steps of estimator {estimator!r} on "
          f"{model_name or 'the built-in tiny model (CPU)'}; full per-step logs in {steps_log_path}", file=stream)
    trainer.train()
    print(format_samples(trainer, "sample completions at the end"), file=stream)

    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    window = max(1, min(10, len(rewards) // 4))
    result = DemoResult(
        first_reward=_window_mean(rewards, window),
        last_reward=_window_mean(rewards[::-1], window),
        rewards=rewards,
        curve_path=save_reward_curve(rewards, out / "reward_curve.png",
                                     f"length control (target {TARGET_LENGTH} chars), estimator {estimator}"),
        log_path=out / "log_history.json",
        steps_log_path=steps_log_path,
    )
    result.log_path.write_text(json.dumps(trainer.state.log_history, indent=1))
    print(f"mean reward, first {window} steps: {result.first_reward:.3f}", file=stream)
    print(f"mean reward, last {window} steps:  {result.last_reward:.3f}", file=stream)
    print(f"reward curve: {result.curve_path}", file=stream)
    return result
