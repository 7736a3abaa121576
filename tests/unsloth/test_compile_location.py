"""``patch_unsloth()`` compiles its trainer into ``UNSLOTH_COMPILE_LOCATION``, also where the variable was set
after ``import unsloth`` (unsloth_zoo reads it once, at import; issue 21 part 5). In a fresh interpreter."""
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
SCRIPT = """
import inspect, json, os, sys
import unsloth  # Unsloth first, as it asks; the variable is not set yet
import unsloth_zoo.compiler as compiler
read_at_import = compiler.UNSLOTH_COMPILE_LOCATION
os.environ["UNSLOTH_COMPILE_LOCATION"] = sys.argv[1]
import grpo_custom
patch = grpo_custom.patch_unsloth()
result = {"read_at_import": read_at_import, "generated": inspect.getfile(patch.module),
          "cwd_trainers": sorted(name for root, _, names in os.walk(".") for name in names if name.startswith("Unsloth"))}
patch.revert()
result["after_revert"] = compiler.UNSLOTH_COMPILE_LOCATION
print("RESULT", json.dumps(result))
"""


def test_patch_compiles_into_the_location_set_after_unsloth_was_imported(tmp_path):
    location = tmp_path / "compiled_here"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UNSLOTH_")}, "PYTHONPATH": str(ROOT),
           "UNSLOTH_ALLOW_CPU": "1", "UNSLOTH_COMPILE_DISABLE": "1", "TORCHDYNAMO_DISABLE": "1",
           "GRPO_CUSTOM_CACHE_DIR": str(tmp_path / "fork"), "HF_HUB_OFFLINE": "1"}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    completed = subprocess.run([sys.executable, "-c", SCRIPT, str(location)], cwd=cwd, env=env, capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout.split("RESULT ", 1)[1])
    assert result["read_at_import"] == "unsloth_compiled_cache"  # Unsloth's default, relative to the cwd
    assert Path(result["generated"]) == location / "UnslothGRPOTrainer.py"
    assert result["cwd_trainers"] == []  # no compiled trainer in ./unsloth_compiled_cache
    assert result["after_revert"] == "unsloth_compiled_cache"  # revert() restores Unsloth's own setting
