"""The documented entry, ``import grpo_custom; grpo_custom.patch_unsloth()``: the fast import order for Unsloth,
and on a CPU without Unsloth's spoof either a patch (Unsloth >= 2026.10.9 falls back to a CPU backend) or a clear
error naming the variables that help (earlier Unsloth refuses to import). Each runs in a fresh interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unsloth
ROOT = Path(__file__).resolve().parents[2]
ENTRY = """
import sys, warnings
warnings.simplefilter("always")
import grpo_custom
print("HEAVY_BEFORE_PATCH", sorted(m for m in ("trl", "transformers", "peft") if m in sys.modules))
try:
    grpo_custom.patch_unsloth()
    print("PATCHED")
except grpo_custom.UnslothPatchError as error:
    print("PATCH_ERROR", error)
"""


# After the patch on Unsloth's CPU backend: one notebook-style config (issue 21): Unsloth's optim message once (the
# honest-config record's internal builds print nothing), and its optim/use_cpu rewrites reported.
CPU_BACKEND_CONFIG = """
from grpo_custom.unsloth.patch import active_patch
if active_patch() is None:
    raise SystemExit(0)
import contextlib, io
from trl import GRPOConfig
from grpo_custom.unsloth.honest_config import config_differences
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    config = GRPOConfig(output_dir="out", optim="adamw_8bit", per_device_train_batch_size=1, num_generations=4,
                        warmup_ratio=0.1, max_completion_length=16, report_to="none", max_steps=2)
differences = config_differences(config)
print("OPTIM_MESSAGES", printed.getvalue().count("needs a GPU"))
print("OPTIM_DIFFERENCE", repr(differences.get("optim")), "USE_CPU_DIFFERENCE", repr(differences.get("use_cpu")))
"""


def _entry(tmp_path, extra: str = "", **env_overrides) -> str:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UNSLOTH_")}, "PYTHONPATH": str(ROOT),
           "GRPO_CUSTOM_CACHE_DIR": str(tmp_path / "fork"), "UNSLOTH_COMPILE_LOCATION": str(tmp_path / "compiled"),
           "HF_HUB_OFFLINE": "1", **env_overrides}
    completed = subprocess.run([sys.executable, "-c", ENTRY + extra], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout + completed.stderr


def test_import_grpo_custom_then_patch_is_the_order_unsloth_wants(tmp_path):
    output = _entry(tmp_path, UNSLOTH_ALLOW_CPU="1", UNSLOTH_COMPILE_DISABLE="1", TORCHDYNAMO_DISABLE="1")
    assert "HEAVY_BEFORE_PATCH []" in output  # importing grpo_custom loads none of trl, transformers, peft
    assert "PATCHED" in output
    assert "should be imported before" not in output, output[-3000:]  # Unsloth's import-order warning


def test_patch_on_a_cpu_without_the_spoof_patches_or_says_which_variables_help(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: Unsloth imports")
    output = _entry(tmp_path, extra=CPU_BACKEND_CONFIG)
    assert ("PATCHED" in output) != ("PATCH_ERROR" in output), output[-3000:]
    if "PATCH_ERROR" in output:
        assert "needs a CUDA GPU" in output, output[-3000:]
        assert "UNSLOTH_ALLOW_CPU=1" in output and "UNSLOTH_COMPILE_DISABLE=1" in output
    else:  # Unsloth's CPU backend: its rewrites of the optimizer and the device are reported, its message once
        assert "OPTIM_MESSAGES 1" in output, output[-3000:]
        difference = next(line for line in output.splitlines() if line.startswith("OPTIM_DIFFERENCE"))
        assert difference.startswith("OPTIM_DIFFERENCE ('adamw_8bit', ") and "adamw_torch" in difference, difference
        assert "USE_CPU_DIFFERENCE (False, True)" in output, output[-3000:]


def test_unsloth_refusing_a_cpu_becomes_an_error_naming_the_variables(monkeypatch):
    """What Unsloth 2026.10.7/8 do on a CPU (NotImplementedError at import), checked without importing Unsloth."""
    import builtins

    from grpo_custom.unsloth import patch

    real_import = builtins.__import__

    def refusing_import(name, *args, **kwargs):
        if name == "unsloth":
            raise NotImplementedError("Unsloth cannot find any torch accelerator? You need a GPU.")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refusing_import)
    with pytest.raises(patch.UnslothPatchError, match="UNSLOTH_ALLOW_CPU=1") as caught:
        patch._import_unsloth()
    assert "needs a CUDA GPU" in str(caught.value) and "cannot find any torch accelerator" in str(caught.value)
