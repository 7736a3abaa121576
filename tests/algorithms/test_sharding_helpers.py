"""The engine-facing helpers of grpo_custom.algorithms.sharding in one process, the launch engine that doctor reports,
the refusal of DeepSpeed under Unsloth, and the accelerate config files (issue 25; the 2-process checks are in
tests/fork/test_sharding.py and tests/unsloth/test_sharded_training.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grpo_custom.algorithms.regularizers import RegularizerInputs, parse_regularizers
from grpo_custom.algorithms.sharding import full_parameters, full_tensor, launch_engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("environ, expected", [
    ({}, ("single process", 1)),
    ({"WORLD_SIZE": "2"}, ("DDP", 2)),
    ({"WORLD_SIZE": "8", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
     ("DeepSpeed ZeRO-3", 8)),
    ({"WORLD_SIZE": "4", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, ("FSDP2 (accelerate)", 4)),
    ({"WORLD_SIZE": "2", "UNSLOTH_FSDP2": "1"}, ("Unsloth native FSDP2", 2)),
    ({"WORLD_SIZE": "1", "UNSLOTH_FSDP2": "1"}, ("single process", 1)),  # Unsloth shards only above 1 process
])
def test_launch_engine_reads_the_launchers_variables(environ, expected):
    assert launch_engine(environ) == expected


def test_unsharded_model_is_left_as_it_is(tiny_model_dir):
    from tests.helpers import lora_model

    model, _ = lora_model(tiny_model_dir)
    before = dict(model.named_parameters())
    with full_parameters(model) as inside:
        assert inside is model and dict(model.named_parameters()) == before  # the same objects
    weight = torch.randn(3, 2)
    assert full_tensor(weight) is weight
    spec = parse_regularizers([{"name": "lora_l2"}])[0]
    inputs = RegularizerInputs(logps=None, old_logps=None, ref_logps=None, mask=None, advantages=None,
                               entropies=None, model=model, completion_lengths=None)
    expected = sum(float(p.square().sum()) for n, p in model.named_parameters() if "lora_" in n)
    assert spec.compute(inputs)[1]["value"] == pytest.approx(expected, rel=1e-6)


def test_deepspeed_is_refused_at_start_under_unsloth(monkeypatch):
    from types import SimpleNamespace

    from grpo_custom.unsloth.honest_config import check_engine

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    check_engine(SimpleNamespace(deepspeed=None))  # DDP / one process: fine
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ValueError, match=r"DeepSpeed \(DeepSpeed ZeRO-3, world size \d+\) is not supported"):
        check_engine(SimpleNamespace(deepspeed=None))
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    with pytest.raises(ValueError, match=r"args\.deepspeed"):
        check_engine(SimpleNamespace(deepspeed="ds_config.json"))


@pytest.mark.parametrize("name, engine, stage_or_version", [
    ("ddp", "MULTI_GPU", None), ("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3), ("fsdp2", "FSDP", 2)])
def test_accelerate_configs_select_their_engine(name, engine, stage_or_version):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "accelerate_configs" / f"{name}.yaml"))
    assert config.distributed_type.name == engine and not config.use_cpu
    if engine == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == stage_or_version
        assert config.deepspeed_config["zero3_init_flag"] is (stage_or_version == 3)
    if engine == "FSDP":
        assert config.fsdp_config["fsdp_version"] == stage_or_version
