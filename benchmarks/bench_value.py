"""Trainer-level cost of each value-function (critic) kind, side by side against the same run without a critic.

Kinds: ``none`` (``advantage_estimator="grpo"``, no critic) and ``head``, ``shared_head``, ``adapter``
(``advantage_estimator="gae"`` with ``value_function={"kind": ...}``, docs/value_function.md); everything else is the
same: a random tiny Qwen2 model (``grpo_custom.testing.tiny_model.build_tiny_model`` at a chosen hidden size and
depth, float32, saved once), a fresh LoRA adapter (r 8, all linear layers), the same seed, data and reward, and
completions generated to full length (``min_new_tokens`` = ``max_completion_length``), so every kind's loss
scores the same number of tokens whatever its policy learned (the table's last column shows it).
Each (round, kind) trains in its own fresh process (``--child KIND``, which prints its figures as JSON); rounds
alternate the kinds (in a rotated order) so machine noise hits all of them alike. The first optimizer step of
each run is warm-up and is not measured. Per kind:

- **loss time**: seconds per optimizer step inside ``trainer.training_step`` minus the seconds inside
  ``trainer._prepare_inputs`` (both wrapped on the trainer instance; CUDA is synchronized at each edge): the loss
  forward + backward of the policy and, for ``adapter``, the critic adapter's own forward + backward;
- **step time**: seconds per optimizer step between the ``on_step_begin`` and ``on_step_end`` callbacks: also
  generation, rewards, the old values' forward of the critic at generation, and the optimizer steps;
- **peak memory**: on CUDA ``torch.cuda.max_memory_allocated()`` over the measured steps (peak stats reset after
  the warm-up step): every live tensor, weights and optimizer states included; on CPU the peak resident set size
  of the child over the measured steps (Linux ``VmHWM``, reset after the warm-up step through
  ``/proc/self/clear_refs``) minus its resident set size right after the model was loaded (before the trainer was
  built): the trainer's, optimizers' and the steps' memory, glibc's retained heap included.

Times are medians over every measured step of every round; memory is the median over rounds (its range is
printed too). Ratios to ``none`` are paired by round: the median over rounds of (the kind's median in that round /
``none``'s median in that round). The issue's targets (detached ``head`` ≤ 1.05× peak memory and ≤ 1.15×
time; ``shared_head`` ≤ 1.10× / 1.25×) are stated for Unsloth's chunked loss and are measured at that level by
``bench_loss.py`` (its "value head" rows); here they are applied to the trainer-level view (peak memory and loss
time) and printed as PASS/FAIL rows; ``adapter`` has no target (measured and reported). ``--path unsloth`` runs
the same under ``patch_unsloth()`` (on CPU with Unsloth's GPU code path, ``UNSLOTH_ALLOW_CPU=1``). The script
exits 0 whatever the verdicts.

Not a part of ``scripts/gpu_check.sh`` (both of its calls' budgets are taken); on a lent GPU run it alone, e.g.
``python benchmarks/bench_value.py --device cuda --rounds 1 --steps 4 --out $OUT/bench_value_cuda.md`` (not yet
run on a GPU).

    python benchmarks/bench_value.py [--rounds 4] [--steps 6] [--smoke] [--device auto|cpu|cuda]
                                     [--path trl|unsloth] [--hidden H] [--layers L] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("none", "head", "shared_head", "adapter")
TARGETS = {"head": (1.05, 1.15), "shared_head": (1.10, 1.25)}  # (peak memory, loss time) / none
SIZES = {  # hidden size, decoder layers, completions per step (= per-device batch), completion tokens
    "smoke": {"hidden": 64, "layers": 2, "batch": 8, "tokens": 16},
    "cpu": {"hidden": 384, "layers": 4, "batch": 8, "tokens": 48},
    "cuda": {"hidden": 1024, "layers": 8, "batch": 16, "tokens": 256},
}
RESULT_TAG = "BENCH_VALUE_RESULT "
MIB = 1024.0 * 1024.0


def _reward(prompts, completions, **kwargs):
    return [sum(ch.isalpha() for ch in c) / max(len(c), 1) for c in completions]


def kind_options(kind: str) -> dict:
    """``GRPOConfig`` keyword arguments of one kind (``none``: GRPO's own advantages, no critic)."""
    if kind == "none":
        return {"advantage_estimator": "grpo"}
    if kind not in KINDS:
        raise ValueError(f"bench_value: kind {kind!r} is not one of {list(KINDS)}.")
    return {"advantage_estimator": "gae", "value_function": {"kind": kind}}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"bench_value: /proc/self/status has no {field} (CPU memory needs Linux).")


def _reset_peak_rss() -> str:
    """Reset the kernel's peak RSS (VmHWM) to the current RSS; returns the method used."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return "VmHWM reset after warm-up"
    except OSError:
        return "VmHWM over the whole child (reset refused)"


def run_child(kind: str, spec: dict) -> dict:
    """Train one run of ``kind``; returns per-step loss and step seconds and the peak memory (see the docstring)."""
    device = spec["device"]
    if spec["path"] == "unsloth" and device == "cpu":
        os.environ["UNSLOTH_ALLOW_CPU"] = "1"
        os.environ.setdefault("UNSLOTH_COMPILE_DISABLE", "1")
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    if spec["path"] == "unsloth":
        os.environ.setdefault("UNSLOTH_GRPO_PREFIX_GROUPER", "0")  # the value head cannot align it (docs)
        os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", os.path.join(spec["work_dir"], "unsloth_compiled"))
    os.environ.setdefault("GRPO_CUSTOM_CACHE_DIR", os.path.join(spec["work_dir"], "fork_cache"))
    import torch

    import grpo_custom

    on_cuda = device == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise RuntimeError("bench_value: --device cuda but torch sees no CUDA device.")
    torch.set_num_threads(spec["threads"])
    if spec["path"] == "unsloth":
        grpo_custom.patch_unsloth()
    elif not on_cuda:
        from grpo_custom.testing.cpu_logprob import use_torch_logprob_kernel

        use_torch_logprob_kernel()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from grpo_custom.testing.length_task import length_dataset

    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype="float32")
    if on_cuda:
        model = model.to("cuda")
    torch.manual_seed(spec["seed"])
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    if spec["path"] == "unsloth":  # Unsloth-loaded models have these; Unsloth's trainer calls them
        model.for_training = lambda *args, **kwargs: None
        model.for_inference = lambda *args, **kwargs: None
    sync()
    base_rss_kib = None if on_cuda else _status_kib("VmRSS")
    base_cuda = torch.cuda.memory_allocated() if on_cuda else None
    seconds = {"loss": 0.0, "prepare": 0.0}
    record = {"loss": [], "step": [], "memory_method": None}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            seconds.update(loss=0.0, prepare=0.0, start=time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            if state.global_step > 1:  # the first step is warm-up
                record["step"].append(time.perf_counter() - seconds["start"])
                record["loss"].append(seconds["loss"] - seconds["prepare"])
            else:
                if on_cuda:
                    torch.cuda.reset_peak_memory_stats()
                    record["memory_method"] = "torch.cuda.max_memory_allocated, reset after warm-up"
                else:
                    record["memory_method"] = _reset_peak_rss()

    with tempfile.TemporaryDirectory() as output_dir:
        args = grpo_custom.GRPOConfig(
            output_dir=output_dir, per_device_train_batch_size=spec["batch"], num_generations=8,
            max_completion_length=spec["tokens"], max_steps=spec["steps"], learning_rate=1e-3, logging_steps=1,
            report_to="none", bf16=on_cuda, gradient_checkpointing=False, use_cpu=not on_cuda, save_strategy="no",
            seed=spec["seed"], data_seed=spec["seed"], disable_tqdm=True, check_rewards="off",
            generation_kwargs={"min_new_tokens": spec["tokens"]},  # every completion full length: equal work per kind
            **kind_options(kind))
        trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[_reward], args=args,
                                          train_dataset=length_dataset(max(64, spec["batch"] * spec["steps"])),
                                          processing_class=tokenizer, callbacks=[StepTimer()])
        if spec["path"] == "unsloth" and not on_cuda:  # no 16-bit autocast for a float32 model (as on a GPU)
            trainer._autocast_enabled, trainer._autocast_dtype = False, torch.float16
        trainer.training_step = _timed(trainer.training_step, "loss", seconds, sync)
        trainer._prepare_inputs = _timed(trainer._prepare_inputs, "prepare", seconds, sync)
        trainer.train()
        critic = trainer.grpo_custom.critic
        if (critic is None) != (kind == "none") or (critic is not None and critic.config.kind != kind):
            raise RuntimeError(f"bench_value: the {kind!r} run trained critic {critic and critic.config.kind!r}.")
        record["trainer"] = type(trainer).__name__
        record["mean_length"] = [e["completions/mean_length"] for e in trainer.state.log_history
                                 if "completions/mean_length" in e][1:]
    if on_cuda:
        record["peak_bytes"] = torch.cuda.max_memory_allocated()
        record["base_bytes"] = base_cuda
    else:
        record["peak_bytes"] = (_status_kib("VmHWM") - base_rss_kib) * 1024
        record["base_bytes"] = base_rss_kib * 1024
    return record


def _timed(method, key: str, seconds: dict, sync):
    def wrapper(*args, **kwargs):
        sync()
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            sync()
            seconds[key] += time.perf_counter() - start
    return wrapper


def _spawn(kind: str, spec: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec", json.dumps(spec)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"bench_value: the {kind!r} child failed (exit {completed.returncode}):\n"
                           f"{completed.stderr[-6000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def _save_model(directory: str, hidden: int, layers: int) -> None:
    from grpo_custom.testing.tiny_model import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=hidden, num_layers=layers, seed=0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per kind: median loss / step seconds over all its measured steps and median peak bytes over rounds; ratios to
    ``none`` paired by round (the median over rounds of this round's kind / this round's ``none``: the runs of one
    round are adjacent in time, so a slow drift of the machine's load cancels)."""
    table = {}
    for kind, records in runs.items():
        table[kind] = {
            "loss_s": statistics.median([t for r in records for t in r["loss"]]),
            "step_s": statistics.median([t for r in records for t in r["step"]]),
            "peak_bytes": statistics.median([r["peak_bytes"] for r in records]),
            "peak_range": (min(r["peak_bytes"] for r in records), max(r["peak_bytes"] for r in records)),
            "loss_s_by_round": [statistics.median(r["loss"]) for r in records],
            "steps_measured": sum(len(r["loss"]) for r in records),
            "mean_length": statistics.fmean([n for r in records for n in r["mean_length"]]),
        }
    none = runs["none"]
    for kind, records in runs.items():
        pairs = list(zip(records, none))
        table[kind]["loss_x"] = statistics.median(statistics.median(r["loss"]) / statistics.median(n["loss"])
                                                  for r, n in pairs)
        table[kind]["step_x"] = statistics.median(statistics.median(r["step"]) / statistics.median(n["step"])
                                                  for r, n in pairs)
        table[kind]["memory_x"] = (statistics.median(r["peak_bytes"] / n["peak_bytes"] for r, n in pairs)
                                   if all(n["peak_bytes"] > 0 for n in none) else float("nan"))
    return table


def checks(table: dict) -> list[tuple[str, str, float, float, bool]]:
    """(kind, quantity, ratio, target, passed) for the kinds with a target."""
    rows = []
    for kind, (memory_target, time_target) in TARGETS.items():
        if kind in table:
            rows.append((kind, "peak memory", table[kind]["memory_x"], memory_target,
                         table[kind]["memory_x"] <= memory_target))
            rows.append((kind, "loss time", table[kind]["loss_x"], time_target, table[kind]["loss_x"] <= time_target))
    return rows


def report(table: dict, header: list[str], memory_label: str) -> str:
    """The markdown report: header lines, the table, the target rows."""
    lines = [f"- {line}" for line in header] + [""]
    lines += [f"| kind | loss time / step | × none | step time | × none | {memory_label} | × none "
              "| its range over rounds | tokens / completion |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, row in table.items():
        lines.append(f"| {kind} | {row['loss_s'] * 1e3:.1f} ms | {row['loss_x']:.2f} | {row['step_s'] * 1e3:.1f} ms | "
                     f"{row['step_x']:.2f} | {row['peak_bytes'] / MIB:.1f} MiB | {row['memory_x']:.2f} | "
                     f"{row['peak_range'][0] / MIB:.1f}–{row['peak_range'][1] / MIB:.1f} MiB | "
                     f"{row['mean_length']:.1f} |")
    lines += ["", "Median loss time of each round (ms), rounds 1 / 2 / ...: " + "; ".join(
        f"{kind} " + " / ".join(f"{t * 1e3:.0f}" for t in row["loss_s_by_round"]) for kind, row in table.items())]
    lines += ["", "Targets of issue 22 (stated for Unsloth's chunked loss, see bench_loss.py; applied here to the "
              "trainer-level peak memory and loss time):", "",
              "| kind | quantity | × none | target | verdict |", "|---|---|---:|---:|---|"]
    for kind, quantity, value, target, passed in checks(table):
        lines.append(f"| {kind} | {quantity} | {value:.3f} | ≤ {target:.2f} | {'PASS' if passed else 'FAIL'} |")
    if "adapter" in table:
        lines.append(f"| adapter | peak memory / loss time | {table['adapter']['memory_x']:.3f} / "
                     f"{table['adapter']['loss_x']:.3f} | none | measured and reported |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (or, with ``--child``, one run); returns the table, checks and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run, the first one warm-up")
    parser.add_argument("--smoke", action="store_true", help="1 round of 3 steps on a 64-wide model (for CI)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--path", choices=("trl", "unsloth"), default="trl")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="completions per step (8 per prompt)")
    parser.add_argument("--tokens", type=int, default=None, help="max completion tokens")
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        print(RESULT_TAG + json.dumps(run_child(options.child, json.loads(options.spec))), flush=True)
        return {}
    if "none" not in options.kinds:
        parser.error("--kinds must include 'none' (the ratios are to it)")
    if options.rounds < 1 or options.steps < 2:
        parser.error("--rounds must be >= 1 and --steps >= 2 (the first step is warm-up)")
    import torch

    device = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    size = dict(SIZES["smoke" if options.smoke else device])
    size.update({k: getattr(options, k) for k in ("hidden", "layers", "batch", "tokens") if getattr(options, k)})
    if size["batch"] % 8:
        parser.error(f"--batch {size['batch']} must be a multiple of 8 (num_generations)")
    rounds, steps = (1, 3) if options.smoke else (options.rounds, options.steps)
    runs = {kind: [] for kind in options.kinds}
    started = time.time()
    with tempfile.TemporaryDirectory() as work_dir:
        model_dir = os.path.join(work_dir, "model")
        _save_model(model_dir, size["hidden"], size["layers"])
        for round_index in range(rounds):
            order = options.kinds[round_index % len(options.kinds):] + options.kinds[:round_index % len(options.kinds)]
            for kind in order:
                spec = {"device": device, "path": options.path, "model_dir": model_dir, "work_dir": work_dir,
                        "steps": steps, "seed": round_index, "threads": 1 if device == "cpu" else 4, **size}
                runs[kind].append(_spawn(kind, spec))
    table = summarize(runs)
    import trl

    import grpo_custom

    record = runs["none"][0]
    card = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (1 thread per run)"
    memory_label = ("peak CUDA allocated" if device == "cuda" else "peak RSS increase")
    header = [
        f"date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; device: {card}; "
        f"torch {torch.__version__}, trl {trl.__version__}, grpo-custom {grpo_custom.__version__}; "
        f"path: {options.path} ({record['trainer']}"
        f"{', unsloth ' + importlib.metadata.version('unsloth') if options.path == 'unsloth' else ''})",
        f"model: random Qwen2, hidden {size['hidden']}, {size['layers']} layers, float32"
        f"{' (bf16 autocast)' if device == 'cuda' else ''}; LoRA r 8 on all linear layers; "
        f"{size['batch']} completions (8 per prompt) of up to {size['tokens']} tokens per optimizer step",
        f"{rounds} round(s) × {steps} steps per kind (first step of each run = warm-up, not measured), kinds "
        f"alternating in a rotated order, each run in a fresh process; {time.time() - started:.0f} s in all",
        "loss time: inside trainer.training_step minus inside trainer._prepare_inputs (loss forward + backward, "
        "and the critic adapter's own forward + backward); step time: a whole optimizer step (generation, rewards, "
        "old values, optimizer steps included); medians over every measured step; × none: median over rounds of "
        "the ratio of the round's medians",
        ("memory: torch.cuda.max_memory_allocated over the measured steps (everything live, weights included)"
         if device == "cuda" else
         f"memory: peak RSS of the child over the measured steps ({record['memory_method']}) minus its RSS right "
         "after loading the model; median over rounds (× none: median of the rounds' ratios)"),
        "none = advantage_estimator 'grpo' without a critic; the others = 'gae' with value_function {'kind': ...}",
    ]
    text = report(table, header, memory_label)
    print(text)
    if options.out:
        Path(options.out).write_text(text)
    return {"table": table, "checks": checks(table), "report": text, "device": device}


if __name__ == "__main__":
    main()
