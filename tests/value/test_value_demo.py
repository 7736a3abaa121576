"""``grpo-custom demo --estimator gae`` trains with a value head and logs the critic's metrics."""
from __future__ import annotations

import json

from grpo_custom.cli.main import main


def test_demo_with_gae_trains_a_value_head(tmp_path):
    assert main(["demo", "--steps", "3", "--log-every", "1", "--estimator", "gae", "--output-dir", str(tmp_path)]) == 0
    log = json.loads((tmp_path / "log_history.json").read_text())
    steps = [entry for entry in log if "value/loss" in entry]
    assert len(steps) == 3
    assert steps[0]["value/mean"] == 0.0 and steps[-1]["value/mean"] != 0.0  # the head starts at 0 and trains
    assert all(entry["value/loss"] > 0 for entry in steps)
