"""``grpo-custom demo`` trains the length task on the offline tiny model with a readable console (progress bar,
compact lines, samples, summary), full per-step logs in a file, and one-line errors for user mistakes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_custom.cli.demo import DemoError, run_demo
from grpo_custom.cli.main import main

ROOT = Path(__file__).resolve().parents[2]

# The learning test (reward rises, against a no-learning control, over seeds) is in test_demo_learning.py.


def test_demo_console_is_compact_and_every_step_goes_to_the_log_file(tmp_path, capsys):
    assert main(["demo", "--steps", "6", "--log-every", "2", "--estimator", "rloo", "--output-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    console = captured.out + captured.err
    compact = [line for line in console.splitlines() if line.lstrip("\r").startswith("step ")]
    assert [line.split()[1] for line in compact] == ["2/6", "4/6", "6/6"]
    assert all(len(line) < 100 and "reward" in line and "length" in line and "kl" in line and "adv std" in line
               for line in compact)
    assert "sample completions at the start" in console and "sample completions at the end" in console
    assert "mean reward, first" in console and "mean reward, last" in console
    assert f"reward curve: {tmp_path / 'reward_curve.png'}" in console
    assert "'loss':" not in console and "{'" not in console  # no per-step log dicts on the console
    assert len(console) < 6000, len(console)
    assert (tmp_path / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = [json.loads(line) for line in (tmp_path / "log_history.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in steps if "reward" in entry] == list(range(1, 7))
    assert all("completions/mean_length" in entry for entry in steps if "reward" in entry)
    history = json.loads((tmp_path / "log_history.json").read_text())
    assert [entry["step"] for entry in history if "reward" in entry] == list(range(1, 7))


def test_demo_rejects_a_real_model_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DemoError, match="needs a CUDA GPU"):
        run_demo(steps=1, output_dir=str(tmp_path), model_name="unsloth/Qwen2.5-0.5B-Instruct")


def _command(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "grpo_custom", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_user_mistakes_end_in_one_line_errors_and_help_lists_the_choices(tmp_path):
    import torch

    from grpo_custom import list_advantage_estimators

    unknown = _command("demo", "--estimator", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert unknown.stderr.strip().splitlines()[-1].startswith("grpo-custom demo: error: argument --estimator")
    assert len([line for line in unknown.stderr.splitlines() if line.startswith("grpo-custom")]) == 1
    help_text = _command("demo", "--help", cwd=tmp_path).stdout
    assert all(name in help_text for name in list_advantage_estimators())
    if not torch.cuda.is_available():
        model = _command("demo", "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--output-dir", str(tmp_path), cwd=tmp_path)
        assert model.returncode == 2 and "Traceback" not in model.stderr
        assert model.stderr.strip().splitlines()[-1] == (
            "grpo-custom demo: error: --model Qwen/Qwen2.5-0.5B-Instruct runs through Unsloth and needs a CUDA GPU; "
            "none is available (without --model the demo trains the built-in tiny model on this CPU)")
