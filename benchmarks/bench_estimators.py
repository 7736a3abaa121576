"""Throughput of every registered advantage estimator.

Default: N = 65,536 completions in groups of G = 16 (T = 64 tokens for the token-level
REINFORCE++ variant), median of several timed runs after one warm-up. ``--smoke`` runs N = 1,024
once (for CI). Prints one row per estimator: name, options, milliseconds, completions per second.

    python benchmarks/bench_estimators.py [--smoke] [--device cuda] [--dtype float64]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from grpo_custom.algorithms.estimators import get_advantage_estimator, list_advantage_estimators

# Extra option sets timed besides each estimator's defaults.
EXTRA_OPTIONS = {"grpo": [{"scale_rewards": "batch"}], "reinforce_pp": [{"gamma": 0.99}]}
NUM_REWARD_FUNCS = 3
UNSCORABLE_FRACTION = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; ``--smoke`` overrides the size and the number of repeats."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="N = 1,024, one repeat (CI)")
    parser.add_argument("--num-completions", type=int, default=65_536, help="N")
    parser.add_argument("--num-generations", type=int, default=16, help="G")
    parser.add_argument("--max-length", type=int, default=64, help="T, for token-level estimators")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per estimator (median reported)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_completions, args.repeats = 1_024, 1
    if args.num_completions % args.num_generations:
        parser.error(f"--num-completions {args.num_completions} is not divisible by --num-generations")
    return args


def make_inputs(num_completions: int, max_length: int, dtype: torch.dtype, device: str) -> dict:
    """Random rewards with unscorable (NaN) completions, lengths, a right-padded mask, per-function rewards."""
    generator = torch.Generator().manual_seed(0)
    rewards_per_func = torch.rand(num_completions, NUM_REWARD_FUNCS, generator=generator, dtype=dtype)  # [N, F]
    rewards_per_func[torch.rand(num_completions, generator=generator) < UNSCORABLE_FRACTION] = float("nan")
    reward_weights = torch.tensor([1.0, 0.5, 2.0], dtype=dtype)  # [F]
    rewards = (rewards_per_func * reward_weights).nansum(dim=1)  # [N]
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
    lengths = torch.randint(1, max_length + 1, (num_completions,), generator=generator)  # [N]
    mask = (torch.arange(max_length).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.int64)  # [N, T]
    inputs = dict(
        rewards=rewards,
        completion_lengths=lengths,
        completion_mask=mask,
        rewards_per_func=rewards_per_func,
        reward_weights=reward_weights,
    )
    return {key: value.to(device) for key, value in inputs.items()}


def time_estimator(name: str, options: dict, inputs: dict, num_generations: int, repeats: int, device: str) -> float:
    """Median wall time in seconds of ``repeats`` calls (one untimed warm-up call when repeats > 1)."""
    estimator = get_advantage_estimator(name)
    rewards, common = inputs["rewards"], {key: value for key, value in inputs.items() if key != "rewards"}
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if repeats > 1:
        estimator(rewards, num_generations, **common, **options)
        synchronize()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        estimator(rewards, num_generations, **common, **options)
        synchronize()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> list[dict]:
    """Time every registered estimator, print a table and return its rows as dicts."""
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    inputs = make_inputs(args.num_completions, args.max_length, dtype, args.device)
    print(
        f"N={args.num_completions} G={args.num_generations} T={args.max_length} dtype={args.dtype} "
        f"device={args.device} repeats={args.repeats} torch threads={torch.get_num_threads()}"
    )
    print(f"{'estimator':<24}{'options':<28}{'ms':>10}{'completions/s':>16}")
    rows = []
    for name in list_advantage_estimators():
        for options in [{}] + EXTRA_OPTIONS.get(name, []):
            seconds = time_estimator(name, options, inputs, args.num_generations, args.repeats, args.device)
            row = dict(name=name, options=options, ms=seconds * 1e3, completions_per_s=args.num_completions / seconds)
            rows.append(row)
            described = ", ".join(f"{key}={value}" for key, value in options.items()) or "(defaults)"
            print(f"{name:<24}{described:<28}{row['ms']:>10.3f}{row['completions_per_s']:>16,.0f}")
    return rows


if __name__ == "__main__":
    main()
