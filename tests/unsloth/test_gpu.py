"""GPU-only behaviour (skipped without CUDA): 4-bit weights through Unsloth's FastLanguageModel."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def _run_gpu_scenario(tmp_path, scenario="gpu_4bit", **env_overrides) -> dict:
    out = tmp_path / "result.json"
    env = {**os.environ, "UNSLOTH_COMPILE_LOCATION": str(tmp_path / "compiled"), "PYTHONPATH": str(ROOT),
           "GRPO_CUSTOM_CACHE_DIR": str(tmp_path / "fork"), "HF_HUB_OFFLINE": "1", **env_overrides}
    completed = subprocess.run([sys.executable, "-m", "tests.unsloth_scenarios", scenario, str(out)], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, completed.stderr[-6000:]
    return json.loads(out.read_text())


def test_4bit_model_trains_with_regularizers_inside_unsloth_fast_loss(tmp_path):
    result = _run_gpu_scenario(tmp_path)
    assert result["trainer_class"] == "UnslothGRPOTrainer"
    assert result["trainable_changed"] > 0 and result["frozen_changed"] == 0
    assert {"regularizers/kl/value", "regularizers/entropy/value"} <= set(result["metric_keys"])


def test_vllm_fast_inference_generation_with_the_fork(tmp_path):
    pytest.importorskip("vllm")
    result = _run_gpu_scenario(tmp_path, GRPO_CUSTOM_TEST_VLLM="1")
    assert result["used_vllm"]
    assert result["trainable_changed"] > 0 and result["frozen_changed"] == 0


def test_the_adapter_critic_runs_through_unsloths_fast_lora_kernels(tmp_path):
    result = _run_gpu_scenario(tmp_path, "gpu_value_adapter")
    assert result["trainer_class"] == "UnslothGRPOTrainer"
    assert result["policy_lora_moved"] and set(result["policy_lora_moved"]) <= set(result["policy_lora"])
    assert result["base_moved"] == []
    assert result["critic_b_nonzero"] and all(result["critic_b_nonzero"]) and result["critic_updates"] == 2
    assert len(result["value_losses"]) == 2 and all(loss > 0 for loss in result["value_losses"])
    assert result["critic_vs_policy_values"] > 1e-4  # the kernels applied the critic adapter, not the policy's
