"""``advantage_estimator="gae"`` without ``value_function`` fails when the config is built, naming both options, on
TRL's path and under ``patch_unsloth()`` (Unsloth's GPU code path on CPU, in a fresh interpreter)."""
from __future__ import annotations

import importlib.util

import pytest

import grpo_custom
from tests.helpers import run_side_scenario

MESSAGE = "advantage_estimator='gae' needs a learned value function: set value_function"


def test_gae_without_a_value_function_fails_at_config_time(tmp_path):
    common = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(ValueError, match=MESSAGE):
        grpo_custom.GRPOConfig(**common, advantage_estimator="gae")
    config = grpo_custom.GRPOConfig(**common, advantage_estimator="gae", value_function={"lr": 0.01})
    assert config.value_function_config.lr == 0.01
    with pytest.raises(ValueError, match="value_function is set but advantage_estimator='grpo'"):
        grpo_custom.GRPOConfig(**common, value_function={"lr": 0.01})


@pytest.mark.unsloth
@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="Unsloth is not installed")
def test_unsloth_config_raises_the_same(tmp_path):
    results = run_side_scenario("tests.value.config_check_scenario", "unsloth", tmp_path)
    assert set(results) == {"grpo_custom.GRPOConfig", "trl.GRPOConfig", "patched config_class"}
    for label, result in results.items():
        assert result["honest"], label  # the config Unsloth's compiled trainer reads (the honest-config wrapper ran)
        assert result["error"] is not None and result["error"].startswith(MESSAGE), (label, result["error"])
        assert result["with_critic"] == "ValueFunctionConfig"
