"""The main job: ``grpo-custom demo`` trains the length task on the offline tiny model and learns."""
from __future__ import annotations

import json

import pytest

from grpo_custom.cli.demo import run_demo
from grpo_custom.cli.main import main

# grpo_passk optimizes the best completion of each group, not the mean reward this test measures.
MEAN_REWARD_ESTIMATORS = ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "opo", "gdpo"]


@pytest.mark.parametrize("estimator", MEAN_REWARD_ESTIMATORS)
def test_length_task_reward_rises(estimator, tmp_path):
    """Seeded: the mean reward of the last 10 of 40 steps beats the first 10 by more than one character."""
    result = run_demo(estimator=estimator, steps=40, output_dir=str(tmp_path), seed=0)
    assert len(result.rewards) == 40
    assert result.last_reward - result.first_reward > 1.0, (result.first_reward, result.last_reward)


def test_demo_command_prints_rewards_and_saves_the_curve(tmp_path, capsys):
    assert main(["demo", "--steps", "6", "--estimator", "rloo", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mean reward, first" in out and "mean reward, last" in out
    curve = tmp_path / "reward_curve.png"
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((tmp_path / "log_history.json").read_text())
    assert [entry["step"] for entry in history if "reward" in entry] == list(range(1, 7))


def test_demo_rejects_a_real_model_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        run_demo(steps=1, output_dir=str(tmp_path), model_name="unsloth/Qwen2.5-0.5B-Instruct")
