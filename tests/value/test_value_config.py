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


def _config(tmp_path, **options):
    return grpo_custom.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **options)


def test_a_mix_with_gae_takes_the_critic_and_needs_it(tmp_path):
    mix = {"gae": 0.5, "grpo": 0.5}
    with pytest.raises(ValueError, match="the estimator mix's 'gae' needs a learned value function"):
        _config(tmp_path, advantage_estimator=mix)
    config = _config(tmp_path, advantage_estimator=mix, value_function={})
    assert config.value_function_config.kind == "head"
    with pytest.raises(ValueError, match=r"value_function is set but advantage_estimator=\{'rloo'"):
        _config(tmp_path, advantage_estimator={"rloo": 0.5, "grpo": 0.5}, value_function={})


def test_coef_belongs_to_shared_head_and_a_warmup_as_long_as_the_run_warns(tmp_path):
    with pytest.raises(ValueError, match=r"value_function\['coef'\].*only kind='shared_head' has \(kind='head'\)"):
        _config(tmp_path, advantage_estimator="gae", value_function={"coef": 0.5})
    assert _config(tmp_path, advantage_estimator="gae", value_function={"kind": "shared_head"}).value_function_config \
        .coef == 0.1
    with pytest.warns(UserWarning, match=r"warmup_steps'\]=5 >= max_steps=2: every step trains only the critic"):
        _config(tmp_path, advantage_estimator="gae", value_function={"warmup_steps": 5}, max_steps=2)


def test_the_resume_fingerprint_compares_what_the_setting_means(tmp_path):
    from types import SimpleNamespace

    from grpo_custom.fork.hooks.fingerprint import algorithm_fingerprint, check_fingerprint
    from grpo_custom.value.config import ValueFunctionConfig

    def fingerprint(value_function):
        trainer = SimpleNamespace(args=_config(tmp_path, advantage_estimator="gae", value_function=value_function),
                                  reward_func_names=["r"])
        return trainer, algorithm_fingerprint(trainer)

    _, saved = fingerprint({"kind": "head"})
    for same in ({}, {"kind": "head", "lam": 1.0, "lr": 1e-3}, ValueFunctionConfig(kind="head")):
        trainer, current = fingerprint(same)
        assert current == saved
        check_fingerprint(trainer, saved, str(tmp_path / "state.json"))  # no error
    trainer, _ = fingerprint({"lr": 0.01, "layers": [-1, 1]})
    with pytest.raises(ValueError) as error:
        check_fingerprint(trainer, saved, str(tmp_path / "state.json"))
    assert ("value_function['layers']: [-1] in the checkpoint, [-1, 1] now; "
            "value_function['lr']: 0.001 in the checkpoint, 0.01 now") in str(error.value)


def test_a_resumed_critic_optimizer_keeps_this_runs_learning_rates():
    import torch

    from grpo_custom.value.head import ValueHead
    from grpo_custom.value.optimizer import CriticOptimizer

    head = ValueHead(4, 1)
    first = CriticOptimizer(head, 1e-3, None)
    head([torch.ones(2, 4)]).sum().backward()
    first.step()
    resumed = CriticOptimizer(head, 1e-2, None)  # resume_allow_config_change with a new lr
    resumed.load_state_dict(first.state_dict())
    assert resumed.updates == 1 and resumed.optimizer.param_groups[0]["lr"] == 1e-2
    weight = head.linear.weight
    assert torch.equal(resumed.optimizer.state[weight]["exp_avg"], first.optimizer.state[weight]["exp_avg"])
