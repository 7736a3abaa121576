"""Step time of grpo-custom's fork (default settings) vs stock TRL ``GRPOTrainer``, side by side.

Both train the same tiny offline model with a fresh LoRA adapter, the same seed, data and reward.
Rounds alternate stock / fork so machine noise hits both alike; a callback times every optimizer
step (the first step of each run is dropped as warm-up). Prints the median step time of each and
the ratio fork / stock (target ≤ 1.02). ``--smoke`` runs a few steps only (CI keeps it working).

    python benchmarks/bench_overhead.py [--rounds 6] [--steps 10] [--smoke]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []
            self._start = None

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def _reward(prompts, completions, **kwargs):
    return [sum(ch.isalpha() for ch in c) / max(len(c), 1) for c in completions]


def time_run(trainer_class, config_class, model_dir: str, steps: int, seed: int, extra: dict) -> list[float]:
    """Per-step seconds of one training run (warm-up step dropped)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from grpo_custom.testing.length_task import length_dataset
    from grpo_custom.testing.tiny_model import load_tiny_model

    torch.manual_seed(seed)
    model, tokenizer = load_tiny_model(model_dir)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    timer = _step_timer()
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_class(
            output_dir=output_dir, per_device_train_batch_size=8, num_generations=8, max_completion_length=16,
            max_steps=steps, learning_rate=1e-2, logging_steps=1, report_to="none", bf16=False,
            gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(), save_strategy="no", seed=seed,
            disable_tqdm=True, **extra,
        )
        trainer = trainer_class(model=model, reward_funcs=[_reward], args=args, train_dataset=length_dataset(64),
                                processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    return timer.times[1:]


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--smoke", action="store_true", help="2 rounds of 3 steps (for CI)")
    options = parser.parse_args(argv)
    rounds, steps = (2, 3) if options.smoke else (options.rounds, options.steps)

    import torch
    import trl

    import grpo_custom
    from grpo_custom.testing.tiny_model import save_tiny_model

    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        from grpo_custom.testing.cpu_logprob import use_torch_logprob_kernel

        use_torch_logprob_kernel()
    stock_times, fork_times = [], []
    with tempfile.TemporaryDirectory() as model_dir:
        save_tiny_model(model_dir)
        for round_index in range(rounds):
            stock_times += time_run(trl.GRPOTrainer, trl.GRPOConfig, model_dir, steps, round_index, {})
            fork_times += time_run(grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, model_dir, steps, round_index,
                                   {"check_rewards": "off"})
    stock, fork = statistics.median(stock_times), statistics.median(fork_times)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"device: {device}; torch {torch.__version__}, trl {trl.__version__}, grpo-custom {grpo_custom.__version__}")
    print(f"steps timed: {len(stock_times)} stock, {len(fork_times)} fork ({rounds} interleaved rounds)")
    print(f"median step time  stock TRL: {stock * 1e3:8.2f} ms")
    print(f"median step time  fork:      {fork * 1e3:8.2f} ms")
    print(f"ratio fork / stock: {fork / stock:.3f} (target <= 1.02)")
    return {"stock_ms": stock * 1e3, "fork_ms": fork * 1e3, "ratio": fork / stock}


if __name__ == "__main__":
    main()
