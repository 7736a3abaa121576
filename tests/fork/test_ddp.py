"""DDP on CPU (gloo): every statistic over a batch is over the global batch (issue 13 part 6).

``torchrun --nproc_per_node 2`` trains two steps (``ddp_run.py``: rewards from a rule, a reward model with
``normalize="running"`` and one with ``"batch"``, per-task running normalization, kl/entropy loss regularizers
and a length reward regularizer) with 4 completions per rank; one process trains the same global batch of 8.
Both ranks must hold identical rewards, advantages, logged metrics and running state, equal to the one-process
run's (to float32 rounding: the gradients are reduced in another order).
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

WORKER = Path(__file__).with_name("ddp_run.py")


def _reward_model(directory: Path, tokenizer) -> Path:
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(directory)
    return directory


def _mismatches(left, right, path="") -> list[str]:
    """Paths where two JSON records differ (floats: relative 1e-4, absolute 1e-6)."""
    if isinstance(left, dict) and isinstance(right, dict):
        keys = sorted(set(left) | set(right))
        return [m for key in keys for m in (_mismatches(left.get(key), right.get(key), f"{path}/{key}")
                                            if key in left and key in right else [f"{path}/{key} missing"])]
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            return [f"{path}: {len(left)} vs {len(right)} items"]
        return [m for index, (a, b) in enumerate(zip(left, right)) for m in _mismatches(a, b, f"{path}[{index}]")]
    if isinstance(left, float) and isinstance(right, (int, float)):
        return [] if math.isclose(left, right, rel_tol=1e-4, abs_tol=1e-6) else [f"{path}: {left} vs {right}"]
    return [] if left == right else [f"{path}: {left!r} vs {right!r}"]


@pytest.mark.skipif(not torch.distributed.is_available() or shutil.which("torchrun") is None and
                    not (Path(sys.executable).parent / "torchrun").exists(), reason="needs torch.distributed")
def test_two_processes_log_the_global_batch_statistics_of_one(tiny_model_dir, tmp_path):
    from grpo_custom.testing.tiny_model import load_tiny_model

    _, tokenizer = load_tiny_model(tiny_model_dir)
    reward_model = _reward_model(tmp_path / "reward_model", tokenizer)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    for folder, command in (
        ("two", [torchrun, "--nproc_per_node", "2", "--master_port", "29531", str(WORKER)]),
        ("one", [sys.executable, str(WORKER)]),
    ):
        (tmp_path / folder).mkdir()
        per_device = "4" if folder == "two" else "8"
        run = subprocess.run([*command, str(tmp_path / folder), tiny_model_dir, str(reward_model), per_device],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / "two" / f"record-{rank}.json").read_text()) for rank in (0, 1))
    single = json.loads((tmp_path / "one" / "record-0.json").read_text())
    assert rank0 == rank1  # bitwise: every rank logs and holds the same numbers
    assert _mismatches(rank0, single) == []
    logged = rank0["log_history"][0]
    assert {"regularizers/kl/value", "regularizers/entropy/value", "regularizers/length/value",
            "reward_model/rm_running/truncated_frac"} <= set(logged)
    assert rank0["rm_running"]["moments"]["count"] == 16  # 8 completions per step, 2 steps, on every rank
    assert len(rank0["advantages"]) == 8 and len(rank0["rewards"]["rm_batch"]) == 8  # TRL keeps the last batch


@pytest.mark.skipif(not torch.distributed.is_available() or shutil.which("torchrun") is None and
                    not (Path(sys.executable).parent / "torchrun").exists(), reason="needs torch.distributed")
def test_two_processes_open_a_gate_at_the_same_step_from_the_gathered_metric(tiny_model_dir, tmp_path):
    """Issue 23: the gated metric differs per rank (rank 1 alone would open at 4, rank 0 at 8); the gate decides
    on the mean over processes, so both ranks open it at step 6 and train the same stages."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    run = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533",
                          str(WORKER.with_name("ddp_gate_run.py")), str(tmp_path), tiny_model_dir],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"gate-{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["world_size"] == 2
    assert rank0["starts"] == rank1["starts"] == {"strict": 6}
    assert rank0["stages"] == rank1["stages"] == {str(step): float(step > 6) for step in range(1, 9)}
    assert rank0["eval_rewards"] == rank1["eval_rewards"]  # TRL's eval reward metrics are gathered already
    assert run.stdout.count("reward stage 1 'strict' starts") == 1  # printed by the main process only
