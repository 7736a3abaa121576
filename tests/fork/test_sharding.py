"""FSDP2 and DeepSpeed ZeRO-3 on CPU (2 processes, gloo): every piece that reads parameters directly gives the
one-process numbers on every rank (issue 25).

``sharding_run.py`` computes, on each rank, the pieces on an unsharded model (the single-process reference) and
on the same model sharded by ``fully_shard`` and by ``deepspeed.initialize`` (ZeRO-3): the public ``lora_l2`` spec
and a user-registered parameter-space term (values, and every LoRA gradient after the engine's reduction, with a
forward loss beside them), the entropy kernel on a sharded output head, and a reward model created while a ZeRO-3
config is active. accelerate turns FSDP and DeepSpeed off on CPU, so these pieces are driven directly.
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

from tests.fork.test_ddp import _reward_model

WORKER = Path(__file__).with_name("sharding_run.py")
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_RUN = Path(__file__).with_name("sharded_accelerate_run.py")


@pytest.mark.skipif(not torch.distributed.is_available() or not Path(TORCHRUN).exists(), reason="needs torchrun")
def test_sharded_pieces_give_the_single_process_numbers_on_every_rank(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed comes with the test extra (pip install -e .[test])")
    from grpo_custom.testing.tiny_model import load_tiny_model

    _, tokenizer = load_tiny_model(tiny_model_dir)
    reward_model = _reward_model(tmp_path / "reward_model", tokenizer)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", "29533", str(WORKER), str(tmp_path),
                          tiny_model_dir, str(reward_model)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    records = [json.loads((tmp_path / f"record-{rank}.json").read_text()) for rank in (0, 1)]
    single = records[0]["single"]
    assert single["lora_l2"] > 1.0 and single["user_abs_sum"] > 1.0  # random LoRA A and B: a real penalty
    for record in records:
        assert record["single"] == single
        # The engines shard for real, and the term alone sees only this rank's part (the bug):
        assert record["fsdp2"]["sharded"] == "DTensor"
        assert record["fsdp2"]["raw_lora_l2"] < 0.9 * single["lora_l2"]
        assert record["zero3"]["partitioned_shape"] == [0] and record["zero3"]["raw_lora_l2"] == 0.0
        for engine in ("fsdp2", "zero3"):
            got = record[engine]
            # Through the spec: the one-process value on every rank (float32 sums over another order: 1e-5).
            assert got["lora_l2"] == pytest.approx(single["lora_l2"], rel=1e-5)
            assert got["user_abs_sum"] == pytest.approx(single["user_abs_sum"], rel=1e-5)
            # Every LoRA gradient (forward loss + 0.1 · terms) after the engine's reduction, vs one process.
            assert got["grad_error"] < 1e-6
            assert got["kernel_error"] < 1e-6  # log-probs, entropies (and FSDP2: head and hidden gradients)
        assert "ZeRO-3 parameter whose data is partitioned away" in record["zero3"]["released_head_error"]
        reward = record["reward_model"]
        assert reward["plain_load_partitioned"]  # transformers alone would partition the reward model's weights
        assert reward["score_error"] < 1e-6  # RewardModelReward loads it whole on every rank: the same scores
        assert "sharded by FSDP2 or DeepSpeed ZeRO-3" in reward["sharded_instance_error"]


_single_gpu_records: dict = {}


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_single_gpu_zero3_and_fsdp2_train_like_one_process(engine, tiny_model_dir, tmp_path):
    """What CPU cannot test (accelerate turns FSDP and DeepSpeed off there): a whole GRPO run through
    ``accelerate launch`` with the repository's config, at world size 1 (the parameters are still DTensors or ZeRO-3
    partitions), against plain ``python`` on the same batch: ``lora_l2``, the loss and the reward of both steps."""
    if engine == "zero3":
        pytest.importorskip("deepspeed", reason="deepspeed is not installed (scripts/gpu_wheels.sh does not carry it)")
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    launches = {"plain": [sys.executable, str(ACCELERATE_RUN)],
                engine: [accelerate, "launch", "--config_file", str(ROOT / "accelerate_configs" / f"{engine}.yaml"),
                         "--num_processes", "1", "--mixed_precision", "no", str(ACCELERATE_RUN)]}
    for name in ("plain", engine):
        if name in _single_gpu_records:  # the plain reference runs once for both engines
            continue
        (tmp_path / name).mkdir()
        run = subprocess.run([*launches[name], str(tmp_path / name), tiny_model_dir], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
        _single_gpu_records[name] = json.loads((tmp_path / name / "record.json").read_text())
    got, plain = _single_gpu_records[engine], _single_gpu_records["plain"]
    assert (got["engine"], got["sharded"]) == {"fsdp2": ("FSDP", "DTensor"), "zero3": ("DEEPSPEED", "ZeRO-3")}[engine]
    for step in (0, 1):
        for key in ("regularizers/lora_l2/value", "loss", "reward"):
            assert got["log_history"][step][key] == pytest.approx(plain["log_history"][step][key], rel=1e-3), (step, key)
