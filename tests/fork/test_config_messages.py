"""Old scripts are told what changed (issue 21 part 4), and grpo-custom's option errors come first (part 5).

No Unsloth here: grpo-custom's plain ``GRPOConfig`` on the installed TRL / transformers.
"""
from __future__ import annotations

import dataclasses
import inspect
from importlib.metadata import version

import pytest
import torch

import grpo_custom
from grpo_custom.fork.retired_options import RETIRED_OPTIONS


def test_every_retired_option_is_gone_from_the_installed_config_and_its_replacement_is_there():
    """The table holds only what the installed packages cannot say: re-checked against them here."""
    accepted = {f.name for f in dataclasses.fields(grpo_custom.GRPOConfig) if f.init}
    for name, retired in RETIRED_OPTIONS.items():
        assert name not in accepted, f"{name} is an option again: drop it from RETIRED_OPTIONS"
        assert retired.replacement is None or retired.replacement in accepted, (name, retired.replacement)


def test_trl_0_2x_options_name_their_replacement(tmp_path):
    with pytest.raises(TypeError) as caught:  # still a TypeError, like Python's own message
        grpo_custom.GRPOConfig(output_dir=str(tmp_path), warmup_ratio=0.1, max_prompt_length=256, use_cpu=True)
    message = str(caught.value)
    assert "unexpected keyword argument" in message
    warmup_line = next(line for line in message.splitlines() if "'warmup_ratio'" in line)
    assert f"transformers ({version('transformers')})" in warmup_line and "use warmup_steps instead" in warmup_line
    assert "warmup_steps=0.1" in warmup_line  # the value carries over as a fraction
    prompt_line = next(line for line in message.splitlines() if "'max_prompt_length'" in line)
    assert f"trl ({version('trl')})" in prompt_line and "filter or shorten overlong prompts" in prompt_line


def test_a_misspelled_option_gets_the_closest_names(tmp_path):
    with pytest.raises(TypeError, match=r"'learnig_rate': not an option of GRPOConfig; did you mean 'learning_rate'"):
        grpo_custom.GRPOConfig(output_dir=str(tmp_path), learnig_rate=1e-5, use_cpu=True)


def test_the_replacement_runs_what_the_old_option_meant(tmp_path):
    config = grpo_custom.GRPOConfig(output_dir=str(tmp_path), warmup_steps=0.1, use_cpu=True, bf16=False)
    assert config.get_warmup_steps(250) == 25  # a ratio of the training steps, as warmup_ratio=0.1 was
    # Unsloth builds its config from this signature: the wrapper keeps the dataclass fields visible
    parameters = inspect.signature(grpo_custom.GRPOConfig.__init__).parameters
    assert "warmup_steps" in parameters and "advantage_estimator" in parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 runs on this GPU: no device error to come first")
def test_grpo_custom_option_errors_come_before_transformers_device_errors(tmp_path):
    device_error = "bf16/gpu"
    with pytest.raises(ValueError, match=device_error):  # the device error the bad option must precede
        grpo_custom.GRPOConfig(output_dir=str(tmp_path), bf16=True)
    with pytest.raises(Exception, match="Unknown advantage estimator 'nope'"):
        grpo_custom.GRPOConfig(output_dir=str(tmp_path), bf16=True, advantage_estimator="nope")
    with pytest.raises(ValueError, match="reward_errors='ignore' is not valid"):
        grpo_custom.GRPOConfig(output_dir=str(tmp_path), bf16=True, reward_errors="ignore")


def test_an_unsloth_only_option_is_named_as_unsloths_without_unrelated_suggestions(tmp_path):
    with pytest.raises(TypeError) as caught:  # Unsloth's Qwen3 GRPO notebook passes it
        grpo_custom.GRPOConfig(output_dir=str(tmp_path), vllm_sampling_params=object(), use_cpu=True)
    message = str(caught.value)
    assert "'vllm_sampling_params': an option of Unsloth's own GRPOConfig" in message
    assert "accepted under grpo_custom.patch_unsloth()" in message
    assert "did you mean" not in message and "vllm_importance_sampling" not in message


def test_only_close_names_are_suggested(tmp_path):
    with pytest.raises(TypeError) as caught:
        grpo_custom.GRPOConfig(output_dir=str(tmp_path), num_generation=4, reward_shaping_mode="x", use_cpu=True)
    lines = str(caught.value).splitlines()
    assert "did you mean 'num_generations'" in next(line for line in lines if "'num_generation'" in line)
    unrelated = next(line for line in lines if "'reward_shaping_mode'" in line)
    assert unrelated.strip() == "'reward_shaping_mode': not an option of GRPOConfig."
    with pytest.raises(TypeError) as caught:  # a typo of a retired option names the retired option and its successor
        grpo_custom.GRPOConfig(output_dir=str(tmp_path), warmup_ration=0.1, use_cpu=True)
    assert "did you mean 'warmup_ratio': the installed transformers" in str(caught.value)
    assert "use warmup_steps instead" in str(caught.value)
