"""Unsloth's official GRPO notebooks run unchanged under ``patch_unsloth()`` (issue 21, part 1).

Every notebook's ``GRPOConfig`` options (tests/unsloth/notebook_scenarios.py: values from ``unslothai/notebooks``,
shrunk only where a CPU needs it) build and train 2 steps with stock Unsloth and with grpo-custom's patched
classes at their defaults, from the same seed, in one interpreter with Unsloth's GPU code path on CPU. What is
asserted: the patched run trains, equals stock Unsloth (losses, gradient norms and trained weights equal, the
bar tests/unsloth/test_unsloth_fast_path.py sets for the default settings), runs the batch Unsloth chose, and
reports Unsloth's rewrites under the names the notebook wrote; nothing lands in the working directory.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unsloth,
              pytest.mark.skipif(importlib.util.find_spec("unsloth") is None,
                                 reason="Unsloth is not installed (a plain-trl set of the support matrix)")]
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.unsloth.notebook_scenarios import NOTEBOOKS  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("notebooks")
    cwd = work / "cwd"
    cwd.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UNSLOTH_")},
           "UNSLOTH_ALLOW_CPU": "1", "UNSLOTH_COMPILE_DISABLE": "1", "TORCHDYNAMO_DISABLE": "1",
           "UNSLOTH_COMPILE_LOCATION": str(work / "compiled"), "UNSLOTH_GRPO_SEQ_PACKING": "0",
           "UNSLOTH_GRPO_PREFIX_GROUPER": "0", "GRPO_CUSTOM_CACHE_DIR": str(work / "fork_cache"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = work / "result.json"
    completed = subprocess.run([sys.executable, "-m", "tests.unsloth.notebook_scenarios", str(out)], cwd=cwd, env=env,
                               capture_output=True, text=True, timeout=900)
    if completed.returncode != 0:
        pytest.fail(f"notebook scenarios failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}")
    result = json.loads(out.read_text())
    result["cwd_after"] = sorted(os.listdir(cwd))
    return result


@pytest.mark.parametrize("notebook", list(NOTEBOOKS))
def test_notebook_config_trains_two_steps_under_the_patch_like_stock_unsloth(runs, notebook):
    stock, patched = runs[notebook]["stock"], runs[notebook]["patched"]
    assert patched["global_step"] == stock["global_step"] == 2
    assert patched["losses"] == stock["losses"] and len(patched["losses"]) == 2
    assert patched["grad_norms"] == stock["grad_norms"]
    assert patched["max_weight_difference"] == 0.0
    assert patched["trainable_changed"] > 0 and patched["frozen_changed"] == 0
    if not NOTEBOOKS[notebook][2].get("mask_truncated_completions"):
        # a gradient flowed (a random tiny model never ends a completion: with the Gemma 4 notebook's
        # mask_truncated_completions=True every token is masked, in stock Unsloth as under the patch)
        assert max(patched["grad_norms"]) > 0
    assert patched["batch_size"] == stock["batch_size"]  # Unsloth's choice of batch stands


@pytest.mark.parametrize("notebook", list(NOTEBOOKS))
def test_unsloth_rewrites_are_reported_under_the_names_the_notebook_wrote(runs, notebook):
    options = NOTEBOOKS[notebook][2]
    stock, patched = runs[notebook]["stock"], runs[notebook]["patched"]
    differences = patched["differences"]
    if stock["batch_size"] != options["per_device_train_batch_size"]:
        assert differences["per_device_train_batch_size"] == [repr(options["per_device_train_batch_size"]),
                                                              repr(stock["batch_size"])]
    else:
        assert "per_device_train_batch_size" not in differences
    # warmup_ratio: what the notebook wrote, and where it runs; not "warmup_steps: asked 0"
    assert differences["warmup_ratio"] == ["0.1", "warmup_steps=0.1"]
    assert "warmup_steps" not in differences
    if "max_prompt_length" in options:  # TRL 1.x has no such option and Unsloth drops it
        asked, running = differences["max_prompt_length"]
        assert running.startswith("not applied") and "filter or shorten overlong prompts" in running
    for option, (asked, running) in differences.items():
        if option in options and not isinstance(options[option], str):
            assert asked == repr(options[option]), (option, asked)  # asked is what was written


def test_nothing_is_written_to_the_working_directory(runs):
    assert runs["cwd_entries"] == [] and runs["cwd_after"] == []


@pytest.mark.parametrize("notebook", list(NOTEBOOKS))
def test_every_run_saves_its_final_checkpoint_with_the_config(runs, notebook):
    # transformers saves at the final step whatever save_steps is: torch.save(args) must work on both sides
    for side in ("stock", "patched"):
        assert "training_args.bin" in runs[notebook][side]["checkpoint_files"], side
    assert runs[notebook]["patched"]["grpo_custom_warnings"] == []  # the patch line in its place: no warning


def test_a_patch_line_below_the_trl_import_warns_and_still_saves(runs):
    # The config (stock Unsloth's GRPOConfig) and the trainer name were bound before patch_unsloth()
    late = runs["late_patch"]
    for side in ("stock_trainer", "grpo_custom_trainer"):
        assert late[side]["global_step"] == 2, side
        assert "training_args.bin" in late[side]["checkpoint_files"], side  # was: PicklingError at the save
    stock_warnings = late["stock_trainer"]["grpo_custom_warnings"]
    assert len(stock_warnings) == 1, stock_warnings
    assert ("a trainer class bound before grpo_custom.patch_unsloth() (UnslothGRPOTrainer.UnslothGRPOTrainer, stock: "
            "not compiled from grpo-custom's fork) is being built while the patch is active") in stock_warnings[0]
    assert "before `from trl import GRPOConfig, GRPOTrainer`" in stock_warnings[0]
    ours = late["grpo_custom_trainer"]["grpo_custom_warnings"]
    assert len(ours) == 1 and "trl.trainer.grpo_config.GRPOConfig built before grpo_custom.patch_unsloth()" in ours[0]


def test_the_options_named_as_unsloths_are_fields_of_the_installed_unsloth_config_and_not_of_trls(runs):
    """``retired_options.UNSLOTH_OPTIONS`` is written by hand: the installed Unsloth's config is the judge."""
    import dataclasses

    import grpo_custom
    from grpo_custom.fork.retired_options import UNSLOTH_OPTIONS

    plain_fields = {field.name for field in dataclasses.fields(grpo_custom.GRPOConfig)}
    assert set(UNSLOTH_OPTIONS) <= set(runs["unsloth_config_fields"]), set(UNSLOTH_OPTIONS) - set(runs["unsloth_config_fields"])
    assert not set(UNSLOTH_OPTIONS) & plain_fields
