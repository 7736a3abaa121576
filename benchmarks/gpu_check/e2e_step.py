"""GPU check, part "e2e_step": one end-to-end Unsloth LoRA GRPO step on the 1.5B model, with grpo-custom's fork.

    python benchmarks/gpu_check/e2e_step.py --model-dir DIR --result PATH [--budget-s S] [--smoke]

Runs ``grpo_run.py --variant fork`` in a fresh interpreter: ``FastLanguageModel.from_pretrained(DIR,
load_in_4bit=False)`` (bfloat16), LoRA r=16 on every projection, G=8 completions of 256 tokens for one
prompt of 128 tokens, one warm-up step (compiles) then one measured step. Reports for the measured step:

- generation tokens/s = generated tokens / time in ``_generate_single_turn``;
- policy-update time = step time − time in ``_generate_and_score_completions`` (forward, loss, backward and
  optimizer step of the update batch);
- MFU = 6 · N · tokens / update time / 989e12, N = the base model's parameters (LoRA excluded), tokens =
  rows × (prompt + completion) positions of the update batch, 989e12 = the H200's dense bf16 peak (datasheet).
  6·N is the dense training rule of thumb; LoRA skips the frozen weights' gradient (≈ 4·N), and gradient
  checkpointing adds a forward (≈ 8·N), so the figure is an estimate of order, not a precise utilization.

``--smoke`` (CPU): tiny model, tiny settings (the MFU figure is then meaningless and labelled so).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gpu_check_common import Deadline, ResultFile, configure_environment

HERE = Path(__file__).resolve().parent
PEAK_BF16_FLOPS = 989e12  # H200 SXM dense bf16, datasheet
MFU_FORMULA = "MFU = 6 * N * tokens / update_s / 989e12 (N = base parameters, LoRA excluded; tokens = rows x (prompt + completion))"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--result", default=None)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--budget-s", type=float, default=None)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--completion-length", type=int, default=None)
    parser.add_argument("--prompt-chars", type=int, default=None)
    options = parser.parse_args(argv)
    if not (Path(options.model_dir) / "config.json").exists():  # the models part failed: fail fast
        print(f"no model in {options.model_dir} (did the models part run?)", file=sys.stderr)
        return 1
    work = Path(options.work_dir or __import__("tempfile").mkdtemp(prefix="e2e_step_"))
    configure_environment(options.smoke, work)
    deadline = Deadline(options.budget_s)
    result = ResultFile(options.result)
    settings = (dict(warmup=1, timed=1, generations=4, batch=4, completion_length=8, prompt_chars=24, lora_r=4)
                if options.smoke else
                dict(warmup=1, timed=1, generations=8, batch=8, completion_length=256, prompt_chars=128, lora_r=16))
    if options.completion_length:
        settings["completion_length"] = options.completion_length
    if options.prompt_chars:
        settings["prompt_chars"] = options.prompt_chars
    result.update({"settings": settings, "mfu_formula": MFU_FORMULA, "peak_bf16_flops": PEAK_BF16_FLOPS})
    child_result = work / "run.json"
    command = [sys.executable, str(HERE / "grpo_run.py"), "--variant", "fork", "--model-dir", options.model_dir,
               "--result", str(child_result), "--work-dir", str(work / "run"), "--seed", "0"]
    for key, value in settings.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    if options.smoke:
        command.append("--smoke")
    timeout = max(deadline.left() - 3, 10) if options.budget_s else None
    started = time.perf_counter()
    try:
        returncode = subprocess.run(command, env=dict(os.environ), timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        returncode = "timeout"
    result.set("run_s", round(time.perf_counter() - started, 1))
    run = json.loads(child_result.read_text())["figures"] if child_result.exists() else {}
    for key in ("import_s", "load_s", "trainer_class", "base_parameters", "trainable_parameters", "steps",
                "peak_mib_timed", "peak_mib_warmup_and_load", "losses", "rewards"):
        if key in run:
            result.set(key, run[key])
    steps = run.get("steps", [])
    if len(steps) > settings["warmup"] or steps:
        step = steps[settings["warmup"]] if len(steps) > settings["warmup"] else steps[-1]
        if len(steps) <= settings["warmup"]:
            result.note("only the warm-up step finished: the figures below include compilation time")
        figures = {"step_s": step["step_s"], "update_s": step["update_s"],
                   "generate_s": step.get("generate_s"), "score_s": step.get("score_s"),
                   "generated_tokens": step.get("generated_tokens"), "update_tokens": step.get("update_tokens"),
                   "update_batch_rows_prompt_completion": step.get("update_batch")}
        if step.get("generated_tokens") and step.get("generate_s"):
            figures["generation_tokens_per_s"] = round(step["generated_tokens"] / step["generate_s"], 1)
        if step.get("update_tokens") and step["update_s"] > 0 and run.get("base_parameters"):
            flops = 6 * run["base_parameters"] * step["update_tokens"]
            figures["update_tflops_per_s"] = round(flops / step["update_s"] / 1e12, 2)
            figures["mfu"] = round(flops / step["update_s"] / PEAK_BF16_FLOPS, 4)
            if options.smoke:
                result.note("smoke run on CPU: the MFU figure is computed against the H200 peak and is meaningless here")
        result.update(figures)
    if returncode != 0:
        result.note(f"grpo_run exited with {returncode}")
        return 1
    return 0 if "update_s" in result.figures else 1


if __name__ == "__main__":
    sys.exit(main())
