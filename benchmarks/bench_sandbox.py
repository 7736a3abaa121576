"""Throughput of the code-execution sandbox: trivial programs per second, and what isolation costs.

Runs N trivial programs (``def f(): return 1`` judged by ``assert f() == 1``) with W worker
threads through ``code_execution_reward`` at each isolation level ("os": two bubblewrap sandboxes
per program; "process": two plain subprocesses), and a bare ``python -I -S -c pass`` subprocess as
the floor. Prints programs/s with W workers, the sequential per-program time, and the per-program
isolation overhead (sequential time minus the bare subprocess's). Target (issue 14): at least the
old sandbox's ~20 programs/s with 4 workers on 2 cores. ``--smoke`` runs a few programs (CI).

    python benchmarks/bench_sandbox.py [--programs 64] [--workers 4] [--sequential 16] [--smoke]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

CODE = "def f():\n    return 1\n"
TESTS = "assert f() == 1"


def bare_run() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
    return time.perf_counter() - start


def bare_throughput(programs: int, workers: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: bare_run(), range(programs)))
    return programs / (time.perf_counter() - start)


def level_figures(level: str, programs: int, workers: int, sequential: int) -> tuple[float, float]:
    """(programs/s with ``workers``, median sequential seconds per program) at ``level``."""
    from grpo_custom.rewards.sandbox import code_execution_reward, run_in_sandbox

    reward = code_execution_reward(max_workers=workers, isolation=level)
    reward(prompts=["p"] * workers, completions=[CODE] * workers, tests=[TESTS] * workers)  # warm-up
    start = time.perf_counter()
    rewards = reward(prompts=["p"] * programs, completions=[CODE] * programs, tests=[TESTS] * programs)
    rate = programs / (time.perf_counter() - start)
    assert rewards == [1.0] * programs, reward.last_reasons
    times = []
    for _ in range(sequential):
        start = time.perf_counter()
        assert run_in_sandbox(CODE, TESTS, isolation=level).passed
        times.append(time.perf_counter() - start)
    return rate, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sequential", type=int, default=16, help="programs timed one at a time")
    parser.add_argument("--smoke", action="store_true", help="a few programs only (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.programs, args.workers, args.sequential = 4, 2, 2
    logging.getLogger("grpo_custom.rewards.sandbox").setLevel(logging.ERROR)  # the "process" level's warning
    from grpo_custom.rewards.sandbox import isolation_level

    level, reason = isolation_level()
    print(f"sandbox benchmark: {args.programs} trivial programs, {args.workers} workers, {os.cpu_count()} CPUs")
    print(f"isolation this machine gives: {level} ({reason})")
    bare_seq = statistics.median(bare_run() for _ in range(max(args.sequential, 3)))
    bare_rate = bare_throughput(args.programs, args.workers)
    print(f"bare `python -I -S -c pass` subprocess: {bare_seq * 1000:.1f} ms each sequential, "
          f"{bare_rate:.1f} programs/s with {args.workers} workers")
    for name in ("os", "process"):
        if name == "os" and level != "os":
            print(f"level os: unavailable here ({reason})")
            continue
        rate, seq = level_figures(name, args.programs, args.workers, args.sequential)
        print(f"level {name}: {rate:.1f} programs/s with {args.workers} workers; {seq * 1000:.1f} ms per program "
              f"sequential; isolation overhead {(seq - bare_seq) * 1000:.1f} ms per program vs bare "
              f"(a program is 2 processes: solution and judge)")


if __name__ == "__main__":
    main()
