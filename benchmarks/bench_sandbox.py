"""Throughput of the code-execution sandbox: trivial programs per second, and what isolation costs.

Runs N trivial programs (``def f(): return 1`` judged by ``assert f() == 1``) with W worker
threads through ``code_execution_reward`` at each isolation level ("os": a bubblewrap sandbox for the
solution per program plus pooled judge servers, each in its own sandbox; "process": plain subprocesses),
and a bare ``python -I -S -c pass`` subprocess as the floor. Prints programs/s with W workers, the
sequential per-program time, and the per-program isolation overhead (sequential time minus the bare subprocess's). Then, side by side in interleaved rounds,
the sandbox it replaced (``--baseline-rev``: the single-process sandbox with rlimits and an audit hook, no OS
isolation and a verdict the code could forge, read from git history) against both levels, and the ratios.
Target (issue 14): at least the old sandbox's throughput (~20 programs/s with 4 workers on 2 cores when the
issue was filed). ``--smoke`` runs a few programs (CI); ``--rounds 0`` skips the side-by-side part.

    python benchmarks/bench_sandbox.py [--programs 64] [--workers 4] [--sequential 16] [--rounds 5]
                                       [--baseline-rev REV] [--smoke]
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

BASELINE_REV = "382105d~1"  # the last commit with the single-process sandbox (grpo_custom/rewards/sandbox.py)
BASELINE_PATH = "grpo_custom/rewards/sandbox.py"
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


def baseline_reward(rev: str, workers: int):
    """The replaced sandbox's ``code_execution_reward(max_workers=workers)``, loaded from ``rev`` in git history;
    raises RuntimeError naming the revision when git or the file is unavailable (an installed copy, a shallow clone)."""
    import importlib.util
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(["git", "-C", root, "show", f"{rev}:{BASELINE_PATH}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench_sandbox: cannot read {BASELINE_PATH} at {rev}: {done.stderr.strip()[:200]}")
    folder = tempfile.mkdtemp(prefix="bench_sandbox_baseline_")
    path = os.path.join(folder, "baseline_sandbox.py")
    with open(path, "w") as handle:
        handle.write(done.stdout)
    spec = importlib.util.spec_from_file_location("baseline_sandbox", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_sandbox"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module.code_execution_reward(max_workers=workers)


def side_by_side(rev: str, programs: int, workers: int, rounds: int) -> dict[str, list[float]]:
    """programs/s of the replaced sandbox and of both levels, one batch of each per round, interleaved."""
    from grpo_custom.rewards.sandbox import code_execution_reward

    rewards = {"old sandbox": baseline_reward(rev, workers),
               "level os": code_execution_reward(max_workers=workers, isolation="os"),
               "level process": code_execution_reward(max_workers=workers, isolation="process")}
    for reward in rewards.values():  # warm-up
        reward(prompts=["p"] * workers, completions=[CODE] * workers, tests=[TESTS] * workers)
    rates: dict[str, list[float]] = {name: [] for name in rewards}
    for _ in range(rounds):
        for name, reward in rewards.items():
            start = time.perf_counter()
            scores = reward(prompts=["p"] * programs, completions=[CODE] * programs, tests=[TESTS] * programs)
            rates[name].append(programs / (time.perf_counter() - start))
            assert scores == [1.0] * programs, (name, scores)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sequential", type=int, default=16, help="programs timed one at a time")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds against the replaced sandbox")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision holding the replaced sandbox")
    parser.add_argument("--smoke", action="store_true", help="a few programs only (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.programs, args.workers, args.sequential, args.rounds = 4, 2, 2, 1
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
              f"(a program is a fresh solution process plus a pooled judge server)")
    if args.rounds <= 0 or level != "os":
        return
    try:
        rates = side_by_side(args.baseline_rev, args.programs, args.workers, args.rounds)
    except RuntimeError as exc:
        print(f"side by side: skipped ({exc})")
        return
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"side by side, {args.rounds} interleaved rounds of {args.programs} programs, {args.workers} workers "
          f"(old sandbox from {args.baseline_rev}; load average {os.getloadavg()[0]:.1f}):")
    for name, values in rates.items():
        print(f"  {name}: median {medians[name]:.1f} programs/s ({', '.join(f'{v:.1f}' for v in values)})")
    for name in ("level os", "level process"):
        print(f"  {name} / old sandbox: {medians[name] / medians['old sandbox']:.2f}x")


if __name__ == "__main__":
    main()
