"""GPU check, part "step_compare": grpo-custom's fork vs stock Unsloth, median GRPO step time and peak VRAM.

    python benchmarks/gpu_check/step_compare.py --model-dir DIR --result PATH [--budget-s S] [--smoke]

Each run is ``grpo_run.py`` in a fresh interpreter (stock: ``import unsloth`` only; fork:
``grpo_custom.patch_unsloth()``; then the same TRL script, same seed), LoRA on the 0.5B model, ``--warmup``
steps then ``--timed`` timed steps. Runs are interleaved stock, fork, stock, fork, ...: the first pair always
runs, each run of a pair given an equal share of the budget left (a run stopped by it still reports the
timed steps it finished); a further pair starts only if the budget left covers 1.2× the slowest pair so far.
The figures pool the timed steps of every run of a variant: median step time, median policy-update time,
generation tokens/s, the highest timed-step peak VRAM, and fork/stock ratios. With default settings the fork should
train like stock: the first run of each variant's losses are compared.

``--smoke`` (CPU): one pair with tiny settings.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gpu_check_common import Deadline, ResultFile, configure_environment

HERE = Path(__file__).resolve().parent
VARIANTS = ("stock", "fork")


def child_command(options, variant: str, result: Path, work: Path) -> list[str]:
    command = [sys.executable, str(HERE / "grpo_run.py"), "--variant", variant, "--model-dir", options.model_dir,
               "--result", str(result), "--work-dir", str(work), "--warmup", str(options.warmup),
               "--timed", str(options.timed), "--generations", str(options.generations), "--batch",
               str(options.batch), "--completion-length", str(options.completion_length), "--prompt-chars",
               str(options.prompt_chars), "--lora-r", str(options.lora_r), "--seed", "0"]
    return command + (["--smoke"] if options.smoke else [])


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant and r.get("figures", {}).get("timed_steps_done")]
        steps = [s for r in mine for s in r["figures"]["steps"][r["figures"]["settings"]["warmup"]:]]
        if not steps:
            continue
        entry = {"runs": len(mine), "timed_steps": len(steps),
                 "median_step_s": round(statistics.median(s["step_s"] for s in steps), 4),
                 "median_update_s": round(statistics.median(s["update_s"] for s in steps), 4),
                 "per_run_median_step_s": [round(r["figures"]["median_step_s"], 4) for r in mine]}
        generated = [s for s in steps if s.get("generated_tokens") and s.get("generate_s")]
        if generated:
            entry["generation_tokens_per_s"] = round(sum(s["generated_tokens"] for s in generated)
                                                     / sum(s["generate_s"] for s in generated), 1)
        peaks = [r["figures"]["peak_mib_timed"] for r in mine if "peak_mib_timed" in r["figures"]]
        if peaks:
            entry["peak_mib_timed"] = max(peaks)
        entry["trainer_class"] = mine[0]["figures"].get("trainer_class")
        summary[variant] = entry
    if "stock" in summary and "fork" in summary:
        stock, fork = summary["stock"], summary["fork"]
        summary["fork_over_stock_step_time"] = round(fork["median_step_s"] / stock["median_step_s"], 4)
        summary["fork_over_stock_update_time"] = round(fork["median_update_s"] / stock["median_update_s"], 4)
        if "peak_mib_timed" in stock and "peak_mib_timed" in fork:
            summary["fork_over_stock_peak_vram"] = round(fork["peak_mib_timed"] / stock["peak_mib_timed"], 4)
    first = {v: next((r for r in runs if r["variant"] == v and r.get("figures", {}).get("losses")), None)
             for v in VARIANTS}
    if first["stock"] and first["fork"]:
        a, b = first["stock"]["figures"]["losses"], first["fork"]["figures"]["losses"]
        summary["first_runs_losses"] = {"stock": a, "fork": b, "equal": a == b,
                                        "max_abs_diff": max((abs(x - y) for x, y in zip(a, b)), default=None)}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--result", default=None)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting runs past this")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=None, help="pairs at most (default 3; smoke 1)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--timed", type=int, default=None)
    parser.add_argument("--generations", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--completion-length", type=int, default=None)
    parser.add_argument("--prompt-chars", type=int, default=None)
    parser.add_argument("--lora-r", type=int, default=None)
    options = parser.parse_args(argv)
    defaults = (dict(rounds=1, warmup=1, timed=1, generations=4, batch=4, completion_length=8, prompt_chars=24,
                     lora_r=4) if options.smoke else
                dict(rounds=3, warmup=2, timed=5, generations=8, batch=8, completion_length=64, prompt_chars=96,
                     lora_r=16))
    for key, value in defaults.items():
        if getattr(options, key) is None:
            setattr(options, key, value)
    if not (Path(options.model_dir) / "config.json").exists():  # the models part failed: fail fast
        print(f"no model in {options.model_dir} (did the models part run?)", file=sys.stderr)
        return 1
    work = Path(options.work_dir or __import__("tempfile").mkdtemp(prefix="step_compare_"))
    configure_environment(options.smoke, work)
    deadline = Deadline(options.budget_s)
    result = ResultFile(options.result)
    result.set("settings", {k: v for k, v in vars(options).items() if k not in ("result", "work_dir", "model_dir")})
    runs: list[dict] = []
    pair_seconds: list[float] = []
    for round_index in range(options.rounds):
        if round_index and deadline.left() < 1.2 * max(pair_seconds):
            result.note(f"stopped after {round_index} pair(s): {deadline.left():.0f} s left, a pair took "
                        f"up to {max(pair_seconds):.0f} s")
            break
        pair_start = time.perf_counter()
        for position, variant in enumerate(VARIANTS):
            name = f"{round_index + 1}_{variant}"
            child_result = work / f"{name}.json"
            env = dict(os.environ, UNSLOTH_COMPILE_LOCATION=str(work / f"compiled_{variant}"))
            # an equal share of what is left for each run still to come in this pair, so that a slow first run
            # cannot starve the second; a run stopped early still reports the timed steps it finished
            timeout = max((deadline.left() - 3) / (len(VARIANTS) - position), 10) if options.budget_s else None
            started = time.perf_counter()
            print(f"--- run {name} (timeout {timeout and round(timeout)} s)", flush=True)
            try:
                completed = subprocess.run(child_command(options, variant, child_result, work / name), env=env,
                                           timeout=timeout)
                status = "ok" if completed.returncode == 0 else f"failed (exit {completed.returncode})"
            except subprocess.TimeoutExpired:
                status = "timeout"
            run = {"run": name, "variant": variant, "status": status,
                   "seconds": round(time.perf_counter() - started, 1)}
            if child_result.exists():
                run["figures"] = json.loads(child_result.read_text())["figures"]
            runs.append(run)
            result.update({"runs": [{k: v for k, v in r.items() if k != "figures"}
                                    | {"median_step_s": r.get("figures", {}).get("median_step_s"),
                                       "peak_mib_timed": r.get("figures", {}).get("peak_mib_timed"),
                                       "import_s": r.get("figures", {}).get("import_s"),
                                       "load_s": r.get("figures", {}).get("load_s"),
                                       "steps": r.get("figures", {}).get("steps")} for r in runs],
                           "summary": summarize(runs)})
        pair_seconds.append(time.perf_counter() - pair_start)
        if any(r["status"] != "ok" for r in runs):
            result.note("a run did not finish: no further pairs")
            break
    summary = result.figures["summary"]
    return 0 if "fork_over_stock_step_time" in summary and all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
