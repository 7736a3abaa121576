"""Curriculum gates under Unsloth's compiled trainer (issue 23): the gate opens at the predicted step, the weights,
reward quantiles and a stage-relative KL coefficient follow, the stage summaries are written."""
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


def test_gate_opens_at_the_predicted_step_under_unsloth(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UNSLOTH_")},
           "PYTHONPATH": str(ROOT), "GRPO_CUSTOM_CACHE_DIR": str(tmp_path / "fork_cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "UNSLOTH_ALLOW_CPU": "1",
           "UNSLOTH_COMPILE_DISABLE": "1", "TORCHDYNAMO_DISABLE": "1", "UNSLOTH_COMPILE_LOCATION": str(tmp_path / "c"),
           "UNSLOTH_GRPO_SEQ_PACKING": "0", "UNSLOTH_GRPO_PREFIX_GROUPER": "0"}
    out = tmp_path / "gates.json"
    run = subprocess.run([sys.executable, "-m", "tests.unsloth.gate_scenario", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    result = json.loads(out.read_text())
    assert result["trainer_class"].startswith("Unsloth")
    assert result["starts"] == {"strict": 4}  # evaluations log 2, 4, 6: the first >= 3 is at step 4
    assert "[grpo-custom] step 4: reward stage 1 'strict' starts: eval_rewards/progress/mean >= 3" in run.stdout
    entries = {entry["step"]: entry for entry in result["entries"]}
    assert sorted(entries) == [1, 2, 3, 4, 5, 6]
    for step, entry in entries.items():
        generated = step - 1
        assert entry["schedule/stage"] == float(generated >= 4), step
        assert entry["schedule/weight/letters"] == float(generated >= 4), step
        assert entry["rewards/progress/q10"] == entry["rewards/progress/q90"] == generated  # every score is the step
        assert entry["rewards/letters/q10"] <= entry["rewards/letters/q50"] <= entry["rewards/letters/q90"]
        assert entry["regularizers/kl/coef"] == pytest.approx(0.0 if generated < 4 else 0.1 * (generated - 4)), step
    assert result["summaries"] == ["0-warm.json", "1-strict.json"]
