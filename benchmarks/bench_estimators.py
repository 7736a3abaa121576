"""Throughput of every registered advantage estimator.

Default: N = 65,536 completions in groups of G = 16 (T = 64 tokens for the token-level
REINFORCE++ variant and ``gae``, which reads random values), median of several timed runs after one
warm-up. ``--smoke`` runs N = 1,024 once (for CI). Prints one row per estimator: name, options,
milliseconds, completions per second.

Then GAE's chunked scan (``compute_gae``) against a reverse Python loop over T with the same
arithmetic, at N = 256, T = 4,096 (``--gae-rows``, ``--gae-length``; smoke: 32 × 512), target ≥ 8×,
right-padded and with holes side by side, once per torch thread count (``--gae-threads``, default
1 and torch's default), with the load average (other jobs on the machine change the figures). On CPU
it adds the row compute_gae would give if it kept torch's threads (the reason it does not:
``grpo_custom/algorithms/estimators/scan.py``).

    python benchmarks/bench_estimators.py [--smoke] [--device cuda] [--dtype float64] [--threads 1] [--gae-only]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from grpo_custom.algorithms.estimators import scan as scan_module
from grpo_custom.algorithms.estimators import (
    AdvantageInputs,
    call_estimator,
    compute_gae,
    get_advantage_estimator,
    list_advantage_estimators,
)

# Extra option sets timed besides each estimator's defaults.
EXTRA_OPTIONS = {"grpo": [{"scale_rewards": "batch"}], "reinforce_pp": [{"gamma": 0.99}],
                 "gae": [{"gamma": 0.99, "lam": "adaptive"}]}
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
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--gae-rows", type=int, default=256, help="N of the GAE scan comparison")
    parser.add_argument("--gae-length", type=int, default=4_096, help="T of the GAE scan comparison")
    parser.add_argument("--gae-only", action="store_true", help="only the GAE scan comparison")
    parser.add_argument("--gae-threads", default=None,
                        help="comma-separated torch thread counts for the GAE comparison (default: 1 and torch's)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_completions, args.repeats = 1_024, 1
        args.gae_rows, args.gae_length = 32, 512
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
        values=torch.randn(num_completions, max_length, generator=generator, dtype=dtype),  # [N, T] for gae
    )
    return {key: value.to(device) for key, value in inputs.items()}


def time_estimator(name: str, options: dict, inputs: dict, num_generations: int, repeats: int, device: str) -> float:
    """Median wall time in seconds of ``repeats`` calls (one untimed warm-up call when repeats > 1)."""
    estimator = get_advantage_estimator(name)
    batch = AdvantageInputs(num_generations=num_generations, **inputs)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if repeats > 1:
        call_estimator(estimator, batch, options)
        synchronize()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call_estimator(estimator, batch, options)
        synchronize()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> list[dict]:
    """Time every registered estimator, print a table and return its rows as dicts."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    inputs = make_inputs(args.num_completions, args.max_length, dtype, args.device)
    print(
        f"N={args.num_completions} G={args.num_generations} T={args.max_length} dtype={args.dtype} "
        f"device={args.device} repeats={args.repeats} torch threads={torch.get_num_threads()}"
    )
    print(f"{'estimator':<24}{'options':<28}{'ms':>10}{'completions/s':>16}")
    rows = []
    for name in [] if args.gae_only else list_advantage_estimators():
        for options in [{}] + EXTRA_OPTIONS.get(name, []):
            seconds = time_estimator(name, options, inputs, args.num_generations, args.repeats, args.device)
            row = dict(name=name, options=options, ms=seconds * 1e3, completions_per_s=args.num_completions / seconds)
            rows.append(row)
            described = ", ".join(f"{key}={value}" for key, value in options.items()) or "(defaults)"
            print(f"{name:<24}{described:<28}{row['ms']:>10.3f}{row['completions_per_s']:>16,.0f}")
    default_threads = torch.get_num_threads()
    counts = ([int(count) for count in args.gae_threads.split(",")] if args.gae_threads
              else sorted({1, default_threads}))
    for count in counts:
        torch.set_num_threads(count)
        rows.append(compare_gae_scan(args, dtype))
    torch.set_num_threads(default_threads)
    return rows


def reverse_loop_gae(rewards, values, mask, gamma: float, lam: float) -> torch.Tensor:
    """GAE as a reverse Python loop over T (the baseline): masked tokens carry the next value and the advantage."""
    weights = mask.to(rewards.dtype)
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    columns = [None] * rewards.shape[1]
    for t in range(rewards.shape[1] - 1, -1, -1):
        keep = weights[:, t]
        step = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * running
        running = keep * step + (1 - keep) * running
        next_value = keep * values[:, t] + (1 - keep) * next_value
        columns[t] = running
    return torch.stack(columns, dim=1)


def compare_gae_scan(args: argparse.Namespace, dtype: torch.dtype) -> dict:
    """Median times of compute_gae and of the reverse loop on the same random batch: right padding (the GRPO
    layout), then with 10% of the completion tokens masked inside completions (tool outputs)."""
    generator = torch.Generator().manual_seed(1)
    rows, length = args.gae_rows, args.gae_length
    rewards = torch.randn(rows, length, generator=generator, dtype=dtype).to(args.device)
    values = torch.randn(rows, length, generator=generator, dtype=dtype).to(args.device)
    lengths = torch.randint(1, length + 1, (rows, 1), generator=generator)
    right_padded = (torch.arange(length) < lengths).to(args.device)
    with_holes = right_padded & (torch.rand(rows, length, generator=generator) > 0.1).to(args.device)
    synchronize = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def median_seconds(function) -> float:
        function()
        synchronize()
        timings = []
        for _ in range(max(args.repeats, 3)):
            start = time.perf_counter()
            function()
            synchronize()
            timings.append(time.perf_counter() - start)
        return statistics.median(timings)

    def run(mask):
        return compute_gae(rewards, values, mask, gamma=0.99, lam=0.95)

    threads = torch.get_num_threads()
    row = dict(name="gae_scan", rows=rows, length=length, threads=threads, load_average=os.getloadavg()[0])
    cells = []
    for layout, mask in (("right-padded", right_padded), ("10% holes", with_holes)):
        loop = median_seconds(lambda: reverse_loop_gae(rewards, values, mask, 0.99, 0.95))
        scan = median_seconds(lambda: run(mask))
        difference = (run(mask)[0] - reverse_loop_gae(rewards, values, mask, 0.99, 0.95)).abs().max().item()
        row[layout] = dict(scan_ms=scan * 1e3, loop_ms=loop * 1e3, speedup=loop / scan, max_abs_difference=difference)
        if args.device == "cpu" and threads > 1:  # what the scan gives if it keeps torch's threads
            scan_module.CPU_ONE_THREAD = False
            try:
                row[layout]["all_threads_ms"] = median_seconds(lambda: run(mask)) * 1e3
            finally:
                scan_module.CPU_ONE_THREAD = True
        cells.append(f"{layout}: {scan * 1e3:.1f} vs {loop * 1e3:.1f} ms = {loop / scan:.1f}x "
                     f"(|diff| {difference:.1e})")
    print(f"gae scan N={rows} T={length} threads={threads} load {row['load_average']:.1f}->{os.getloadavg()[0]:.1f}: "
          f"compute_gae vs reverse loop over T, target >= 8x | " + " | ".join(cells))
    if "all_threads_ms" in row["right-padded"]:
        print(f"    (compute_gae keeping {threads} intra-op threads: "
              + ", ".join(f"{layout} {row[layout]['all_threads_ms']:.1f} ms = "
                          f"{row[layout]['loop_ms'] / row[layout]['all_threads_ms']:.1f}x"
                          for layout in ("right-padded", "10% holes")) + ")")
    return row


if __name__ == "__main__":
    main()
