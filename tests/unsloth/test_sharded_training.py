"""Unsloth's DDP and native FSDP2 paths on CPU (2 processes, gloo) with grpo-custom's features on, against one
process on the same global batch (issue 25).

``sharded_training_run.py`` trains two steps through Unsloth's generated trainer (CPU spoof, GUIDE §2) with the
``rloo`` estimator, ``lora_l2`` on a coefficient schedule, loss-placed ``kl`` and ``entropy``, a reward-placed
``length`` penalty and per-task running normalization; completions come from a pure ``rollout_func``. Plain SGD
(lr 0.5) makes a weight difference the learning rate times a gradient difference.

Tolerances, measured on this CPU: under DDP the loss, grad norm, rewards, advantages, ``lora_l2`` and the task
normalizer's moments equal one process to 1e-4 relative (float32 sums in another order), every LoRA weight to
1.4e-4 after two steps (asserted < 1e-3). The token-level means Unsloth's loss computes (``entropy``, the ``kl`` and
``entropy`` regularizers' values) differ by up to 6 % at step 2: Unsloth pads each process's batch to its own
longest prompt and completion, which moves its logits (not a sharding effect: TRL's path equals one process to 1e-4,
tests/fork/test_ddp.py; stock Unsloth's own ``kl`` metric moves 1.4 % under DDP); asserted within 10 %.

Under Unsloth's native FSDP2 the update moves whenever a reference forward runs, in stock Unsloth too: with β = 0.05
stock's first grad norm is 0.7861 under FSDP2 against 0.7935 on one process (0.94 %) and its last block's LoRA
weights end 0.0215 away after two steps. So two more runs: stock Unsloth and grpo-custom with its default settings,
both under FSDP2 with that β, must be equal (they are, bit for bit), and grpo-custom's FSDP2 run with its features
on must stay within GAP_FACTOR times stock's own gap (measured: grad norm 0.79 % vs stock's 0.94 %, weights 0.0188
vs 0.0215).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("sharded_training_run.py")
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
PADDING_SENSITIVE = ("entropy", "regularizers/entropy/value", "regularizers/entropy/loss", "regularizers/kl/value",
                     "regularizers/kl/loss")
UNSLOTH_LOCAL = ("completion_length",)  # Unsloth's own metric: this process's completions only
STOCK_BETA = 0.05  # stock Unsloth's own KL term: the reference forward that moves its FSDP2 numbers
TRAINING = ("loss", "grad_norm", "train_loss")  # what the FSDP2 reference-forward gap moves
LORA_L2 = ("regularizers/lora_l2/value", "regularizers/lora_l2/loss")
# grpo-custom's FSDP2 run may be this many times as far from one process as stock Unsloth's own FSDP2 run is (its
# extra terms also move with the weights; measured: 0.84x stock's gap in grad norm, 1.8x in the step-2 loss)
GAP_FACTOR = 3

pytestmark = [pytest.mark.unsloth, pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available() or not Path(TORCHRUN).exists(),
                                 reason="needs torchrun")]
_runs: dict = {}


def _environment(work: Path) -> dict:
    return {**os.environ, "UNSLOTH_ALLOW_CPU": "1", "UNSLOTH_COMPILE_DISABLE": "1", "TORCHDYNAMO_DISABLE": "1",
            "UNSLOTH_GRPO_SEQ_PACKING": "0", "UNSLOTH_GRPO_PREFIX_GROUPER": "0", "OMP_NUM_THREADS": "1",
            "UNSLOTH_COMPILE_LOCATION": str(work / "compiled"), "GRPO_CUSTOM_CACHE_DIR": str(work / "fork_cache"),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _records(tiny_model_dir, tmp_path_factory) -> dict:
    """{"one": [record], "ddp": [rank 0, rank 1], "fsdp2": [...], "stock_one": ..., ...}: the six runs, started
    together (grpo-custom's features on one process, DDP and FSDP2; stock Unsloth with β on one process and FSDP2;
    grpo-custom with its default settings and the same β under FSDP2)."""
    if _runs:
        return _runs
    work = tmp_path_factory.mktemp("unsloth_sharded")
    fsdp2 = {"UNSLOTH_FSDP2": "1"}
    with_kl = {"SHARDED_RUN_BETA": str(STOCK_BETA)}
    launches = {  # name: (launcher, per-device batch, variant, environment)
        "one": ([sys.executable, str(WORKER)], "8", "features", {}),
        "ddp": ([TORCHRUN, "--nproc_per_node", "2", "--master_port", "29535", str(WORKER)], "4", "features", {}),
        "fsdp2": ([TORCHRUN, "--nproc_per_node", "2", "--master_port", "29537", str(WORKER)], "4", "features", fsdp2),
        "stock_one": ([sys.executable, str(WORKER)], "8", "stock", with_kl),
        "stock_fsdp2": ([TORCHRUN, "--nproc_per_node", "2", "--master_port", "29539", str(WORKER)], "4", "stock",
                        {**fsdp2, **with_kl}),
        "default_fsdp2": ([TORCHRUN, "--nproc_per_node", "2", "--master_port", "29541", str(WORKER)], "4", "default",
                          {**fsdp2, **with_kl}),
    }
    running = {}
    for name, (command, per_device, variant, extra) in launches.items():
        (work / name).mkdir()
        running[name] = subprocess.Popen(
            [*command, str(work / name), tiny_model_dir, per_device, variant], cwd=ROOT,
            env={**_environment(work / name), **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, process in running.items():
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, f"{name} failed:\n{output[-6000:]}"
        _runs[name] = [json.loads(path.read_text()) for path in sorted((work / name).glob("record-*.json"))]
    return _runs


def _log_mismatches(got: list[dict], want: list[dict], *, skip=()) -> list[str]:
    problems = []
    for step, (entry, reference) in enumerate(zip(got, want)):
        for key, value in reference.items():
            if not isinstance(value, float) or key in skip:
                continue
            tolerance = 0.1 if key in PADDING_SENSITIVE else 1e-4
            if not math.isclose(entry.get(key, math.inf), value, rel_tol=tolerance, abs_tol=1e-6):
                problems.append(f"step {step} {key}: {entry.get(key)} vs {value}")
    return problems


def _without(history: list[dict], keys) -> list[dict]:
    return [{k: v for k, v in entry.items() if k not in keys} for entry in history]


def _weight_error(got: dict, want: dict) -> float:
    assert sorted(got) == sorted(want) and len(want) == 8  # q_proj and v_proj LoRA A and B in 2 layers
    return max(abs(a - b) for name in want for a, b in zip(got[name], want[name]))


def test_unsloth_ddp_equals_one_process(tiny_model_dir, tmp_path_factory):
    runs = _records(tiny_model_dir, tmp_path_factory)
    (single,), (rank0, rank1) = runs["one"], runs["ddp"]
    assert rank0["parameter_type"] == "Parameter"
    assert _without(rank0["log_history"], UNSLOTH_LOCAL) == _without(rank1["log_history"], UNSLOTH_LOCAL)
    assert rank0["weights"] == rank1["weights"]
    assert len(single["log_history"]) == 3 and single["log_history"][0]["regularizers/lora_l2/value"] > 1.0
    assert _log_mismatches(rank0["log_history"], single["log_history"], skip=UNSLOTH_LOCAL) == []
    assert rank0["task_normalizer"] == single["task_normalizer"]
    assert _weight_error(rank0["weights"], single["weights"]) < 1e-3


def test_unsloth_native_fsdp2_shards_and_first_update_sees_the_one_process_numbers(tiny_model_dir, tmp_path_factory):
    runs = _records(tiny_model_dir, tmp_path_factory)
    (single,), (rank0, rank1) = runs["one"], runs["fsdp2"]
    assert rank0["parameter_type"] == "DTensor"  # Unsloth sharded the model itself on the CPU gloo mesh
    assert _without(rank0["log_history"], UNSLOTH_LOCAL) == _without(rank1["log_history"], UNSLOTH_LOCAL)
    assert rank0["weights"] == rank1["weights"]
    first, reference = rank0["log_history"][0], single["log_history"][0]
    # Before any update: the penalty on the whole adapter (lora_l2 was 4.11 here, the mean of 5.38 and 2.85, before
    # full_parameters also followed the last block that Unsloth keeps gathered), the loss it enters, the rewards,
    # advantages and per-task statistics, as one process.
    for key in ("regularizers/lora_l2/value", "loss", "reward", "advantages/std", "tasks/a/reward_mean",
                "regularizers/length/value"):
        assert first[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), key
    for step in (0, 1):  # the rollouts are fixed, so rewards and advantages do not depend on the update
        for key in ("reward", "advantages/std", "advantages/abs_max"):
            assert rank0["log_history"][step][key] == pytest.approx(single["log_history"][step][key], rel=1e-4)
    assert rank0["task_normalizer"] == single["task_normalizer"]


def _relative_gaps(got: list[dict], want: list[dict]) -> dict:
    """{(step, key): |got − want| / |want|} for the training numbers of two log histories."""
    return {(step, key): abs(entry[key] - reference[key]) / abs(reference[key])
            for step, (entry, reference) in enumerate(zip(got, want)) for key in TRAINING if key in reference}


def test_unsloth_native_fsdp2_default_settings_equal_stock_unsloth_fsdp2(tiny_model_dir, tmp_path_factory):
    runs = _records(tiny_model_dir, tmp_path_factory)
    (stock, _), (ours, _) = runs["stock_fsdp2"], runs["default_fsdp2"]
    assert not stock["grpo_custom_patched"] and ours["grpo_custom_patched"]
    assert stock["parameter_type"] == ours["parameter_type"] == "DTensor"
    assert len(ours["log_history"]) == len(stock["log_history"]) == 3  # two steps and the closing summary
    for step, (entry, reference) in enumerate(zip(ours["log_history"], stock["log_history"])):
        for key in (*TRAINING, "kl", "reward", "reward_std"):
            if key in reference:
                assert entry[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-9), (step, key)
    assert _weight_error(ours["weights"], stock["weights"]) < 1e-6


def test_unsloth_native_fsdp2_updates_equal_one_process_within_stock_unsloths_own_gap(tiny_model_dir,
                                                                                     tmp_path_factory):
    """Unsloth 2026.10.9's native FSDP2 on CPU moves the update whenever a reference forward runs (stock: β > 0;
    grpo-custom: the ``kl`` regularizer), mostly in the last decoder block, which it keeps gathered between forward
    and backward. Tolerance: GAP_FACTOR (3) times stock Unsloth's own FSDP2-vs-one-process gap, measured in the same
    test (same model, seed, batch, β = 0.05), plus the DDP tolerances. Without a reference forward (β = 0, no
    ``kl``) stock Unsloth and grpo-custom (rloo, lora_l2, entropy, length, task normalization) equal one process
    to 2e-4 (measured, docs/multi_gpu.md)."""
    runs = _records(tiny_model_dir, tmp_path_factory)
    (single,), (rank0, _) = runs["one"], runs["fsdp2"]
    (stock_single,), (stock_fsdp2, _) = runs["stock_one"], runs["stock_fsdp2"]
    stock_gaps = _relative_gaps(stock_fsdp2["log_history"], stock_single["log_history"])
    stock_weight_gap = _weight_error(stock_fsdp2["weights"], stock_single["weights"])
    assert stock_gaps[(0, "grad_norm")] > 1e-3  # the gap is there in stock Unsloth (0.94 % measured)
    for (step, key), gap in _relative_gaps(rank0["log_history"], single["log_history"]).items():
        allowed = GAP_FACTOR * stock_gaps.get((step, key), 0.0) + 1e-4
        assert gap <= allowed, (step, key, gap, allowed)
    # lora_l2 after an update is a sum of squared adapter weights: within GAP_FACTOR times stock's gap in that sum
    stock_squares = [sum(x * x for values in record["weights"].values() for x in values)
                     for record in (stock_fsdp2, stock_single)]
    squares_gap = abs(stock_squares[0] - stock_squares[1]) / stock_squares[1]  # 0.26 % measured
    for step, (entry, reference) in enumerate(zip(rank0["log_history"][1:2], single["log_history"][1:2]), start=1):
        for key in ("regularizers/lora_l2/value", "regularizers/lora_l2/loss"):
            assert entry[key] == pytest.approx(reference[key], rel=GAP_FACTOR * squares_gap + 1e-4), (step, key)
    got, want = ([history[0], *_without(history[1:], LORA_L2)] for history in (rank0["log_history"],
                                                                           single["log_history"]))
    assert _log_mismatches(got, want, skip=(*UNSLOTH_LOCAL, *TRAINING)) == []
    assert _weight_error(rank0["weights"], single["weights"]) <= GAP_FACTOR * stock_weight_gap + 1e-3
