"""The honest config's record (grpo_custom/unsloth/requested_config.py) on its own, without Unsloth: a running
config stands in for the one Unsloth built (the values Unsloth 2026.10.9 gives a GRPO notebook's options), the
plain ``GRPOConfig`` is TRL's reading. It never raises for what TRL refuses, and reports under the written names."""
from __future__ import annotations

import logging
import pickle

import pytest
import torch

import grpo_custom
from grpo_custom.fork.effective_config import REQUESTED_ATTRIBUTE, config_differences
from grpo_custom.unsloth.honest_config import report_differences
from grpo_custom.unsloth.requested_config import NotApplied, Renamed, build_requested_config, written_options

NOTEBOOK = {"per_device_train_batch_size": 1, "num_generations": 6, "warmup_ratio": 0.1, "max_prompt_length": 256,
            "learning_rate": 5e-6, "report_to": "none"}


def _running(tmp_path, **values):
    """What Unsloth runs for NOTEBOOK: the batch raised to num_generations, warmup_ratio moved, its own seed."""
    return grpo_custom.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=6, num_generations=6,
                                  warmup_steps=0.1, learning_rate=5e-6, report_to="none", seed=3407, **values)


def test_a_batch_trl_refuses_is_recorded_not_raised_and_reported_as_written(tmp_path):
    written = {"output_dir": str(tmp_path), **NOTEBOOK, "use_cpu": True, "bf16": False}
    with pytest.raises(ValueError, match=r"generation_batch_size \(1\) must be divisible by num_generations \(6\)"):
        grpo_custom.GRPOConfig(**{k: v for k, v in written.items() if k not in ("warmup_ratio", "max_prompt_length")})
    config = _running(tmp_path, use_cpu=True, bf16=False)
    requested = build_requested_config(config, grpo_custom.GRPOConfig, written)
    assert "generation_batch_size (1) must be divisible by num_generations (6)" in requested.trl_error
    assert requested.pinned == {"per_device_train_batch_size"}  # only what TRL needs; report_to 'none' is not pinned
    object.__setattr__(config, REQUESTED_ATTRIBUTE, requested)
    differences = config_differences(config)
    assert differences["per_device_train_batch_size"] == (1, 6)
    assert differences["warmup_ratio"] == (0.1, Renamed("warmup_steps", 0.1))
    assert isinstance(differences["max_prompt_length"][1], NotApplied)
    assert differences["seed"] == (42, 3407)  # an option not written: TRL's default against what runs
    # nothing reported twice or under a name the user did not write, and derived values agree
    assert not {"warmup_steps", "generation_batch_size", "steps_per_generation", "report_to"} & set(differences)
    assert set(differences) == {"per_device_train_batch_size", "warmup_ratio", "max_prompt_length", "seed"}


def test_the_report_names_what_was_written_and_why_trl_alone_refuses(tmp_path, caplog):
    config = _running(tmp_path, use_cpu=True, bf16=False)
    written = {"output_dir": str(tmp_path), **NOTEBOOK, "use_cpu": True, "bf16": False}
    object.__setattr__(config, REQUESTED_ATTRIBUTE, build_requested_config(config, grpo_custom.GRPOConfig, written))
    with caplog.at_level(logging.WARNING, logger="grpo_custom.unsloth.honest_config"):
        report_differences(config)
    assert "warmup_ratio: asked 0.1, running warmup_steps=0.1" in caplog.text
    assert "per_device_train_batch_size: asked 1, running 6" in caplog.text
    assert "max_prompt_length: asked 256, running not applied (" in caplog.text
    assert "TRL alone refuses the options as written: ValueError: generation_batch_size (1)" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="TRL's bf16 default runs on a GPU")
def test_trls_device_refusal_pins_only_what_it_needs(tmp_path):
    """Notebooks do not write bf16: TRL's default (bf16) is refused on a CPU, Unsloth's (off) is not."""
    config = _running(tmp_path, bf16=False)
    written = {"output_dir": str(tmp_path), **NOTEBOOK}
    requested = build_requested_config(config, grpo_custom.GRPOConfig, written)
    assert requested.reference is not None and "bf16" in requested.device_error
    # the refusal named is the options' own (the batch of 1), not only the host's precision default
    assert "generation_batch_size (1) must be divisible by num_generations (6)" in requested.trl_error
    assert requested.pinned == {"bf16", "per_device_train_batch_size"}
    assert requested.differences(config)["bf16"] == (None, False)  # TRL's declared default against what runs


@pytest.mark.skipif(torch.cuda.is_available(), reason="TRL's bf16 default runs on a GPU")
def test_the_report_marks_only_written_options_as_asked(tmp_path, caplog):
    config = _running(tmp_path, bf16=False)
    object.__setattr__(config, REQUESTED_ATTRIBUTE,
                       build_requested_config(config, grpo_custom.GRPOConfig, {"output_dir": str(tmp_path), **NOTEBOOK}))
    with caplog.at_level(logging.WARNING, logger="grpo_custom.unsloth.honest_config"):
        report_differences(config)
    lines = caplog.text.splitlines()
    asked = [line.strip().split(":")[0] for line in lines if ": asked " in line]
    assert asked == ["max_prompt_length", "per_device_train_batch_size", "warmup_ratio"]  # what NOTEBOOK wrote
    defaults = [line for line in lines if "defaults Unsloth changes" in line]
    assert len(defaults) == 1 and "seed 42->3407" in defaults[0] and "bf16 None->False" in defaults[0]
    refusal = [line for line in lines if "TRL alone refuses the options as written" in line]
    assert len(refusal) == 1 and "generation_batch_size (1) must be divisible by num_generations (6)" in refusal[0]
    assert any("precision defaults on this machine" in line and "bf16" in line for line in lines)


def test_positional_arguments_are_recorded_by_name():
    def init(self, output_dir=None, per_device_train_batch_size=4, **kwargs):
        pass

    assert written_options(init, ("out", 1), {"num_generations": 6}) == {
        "output_dir": "out", "per_device_train_batch_size": 1, "num_generations": 6}


def test_a_checkpoint_does_not_carry_the_record(tmp_path):
    config = _running(tmp_path, use_cpu=True, bf16=False)
    object.__setattr__(config, REQUESTED_ATTRIBUTE, build_requested_config(config, grpo_custom.GRPOConfig, {}))
    assert REQUESTED_ATTRIBUTE not in pickle.loads(pickle.dumps(config)).__dict__
