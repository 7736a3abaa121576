"""DDP on CPU (gloo) with a value function: the head is identical on every rank and equal to the one-process run's,
and the value metrics are those of the global batch.

``torchrun --nproc_per_node 2`` trains two steps with 4 completions per rank (``ddp_value_run.py``); one process
trains the same global batch of 8. Equality to float32 rounding (gradients are reduced in another order).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fork.test_ddp import _mismatches

WORKER = Path(__file__).with_name("ddp_value_run.py")


@pytest.mark.skipif(not torch.distributed.is_available() or shutil.which("torchrun") is None and
                    not (Path(sys.executable).parent / "torchrun").exists(), reason="needs torch.distributed")
@pytest.mark.parametrize("kind", ["shared_head", "adapter"])
def test_two_processes_hold_the_same_head_as_one(tiny_model_dir, tmp_path, kind):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    for folder, command in (
        ("two", [torchrun, "--nproc_per_node", "2", "--master_port", "29541", str(WORKER)]),
        ("one", [sys.executable, str(WORKER)]),
    ):
        (tmp_path / folder).mkdir()
        per_device = "4" if folder == "two" else "8"
        run = subprocess.run([*command, str(tmp_path / folder), tiny_model_dir, per_device, kind],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / "two" / f"record-{rank}.json").read_text()) for rank in (0, 1))
    single = json.loads((tmp_path / "one" / "record-0.json").read_text())
    assert rank0 == rank1  # bitwise: the same head, LoRA and logged value metrics on every rank
    assert _mismatches(rank0, single) == []
    assert rank0["head_updates"] == 2 and any(abs(w) > 0 for w in rank0["head"]["linear.weight"])
    # the adapter kind's own LoRA (8 tensors: A and B of q_proj, v_proj in 2 layers) trained the same everywhere
    assert len(rank0["critic_adapter"]) == (8 if kind == "adapter" else 0)
    assert all(any(abs(w) > 0 for w in values) for values in rank0["critic_adapter"].values())
    logged = [entry for entry in rank0["value_log"] if "value/loss" in entry]
    assert len(logged) == 2 and {"value/explained_variance", "value/policy_lam", "value/clipfrac"} <= set(logged[0])
