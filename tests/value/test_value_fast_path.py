"""The value function inside Unsloth's fast path (its GPU code path on CPU): same results as TRL's path, no
second forward of the policy. Unsloth's padded mini-batch loop and its sequence packing (its GPU default) both
run; its prefix grouper is off (a clear error with a value head: see docs/value_function.md)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import run_side_scenario
from tests.value.value_fast_path_scenarios import SAME

pytestmark = [pytest.mark.unsloth,
              pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="Unsloth is not installed")]
ROOT = Path(__file__).resolve().parents[2]
REL_TOL = 2e-3  # tests/unsloth/test_metrics_parity.py's tolerance for batch-determined values


def _run(side: str, work: Path, packing: bool = False) -> dict:
    return run_side_scenario("tests.value.value_fast_path_scenarios", side, work, packing=packing)


_runs: dict = {}
LAYOUTS = [pytest.param("padded"), pytest.param("packed", marks=pytest.mark.slow)]  # packed: Unsloth's GPU default


def _layout(name: str, tmp_path_factory) -> dict:
    """One side's results, run once per session: ``trl``, ``padded`` or ``packed`` (~60 s each on 2 cores)."""
    if name not in _runs:
        work = tmp_path_factory.mktemp(f"value_fast_path_{name}")
        _runs[name] = _run("trl" if name == "trl" else "unsloth", work, packing=name == "packed")
    return _runs[name]


def _close(got, want, rel=REL_TOL, atol=1e-6):
    got, want = torch.tensor(got), torch.tensor(want)
    return float((got - want).abs().max()) <= atol + rel * float(want.abs().max())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["head", "shared_head", "adapter"])
def test_every_kind_under_unsloth_equals_trls_path(tmp_path_factory, layout, kind):
    """The first batch (same policy, same completions): the same rollout metrics, value loss and clip fraction, and
    the same head after the first update (for the adapter kind the head read the critic adapter's hidden states);
    the second step logs the same metrics."""
    trl, unsloth = _layout("trl", tmp_path_factory)[kind], _layout(layout, tmp_path_factory)[kind]
    assert unsloth["trainer"].startswith("Unsloth") and not trl["trainer"].startswith("Unsloth")
    assert len(trl["values"]) == len(unsloth["values"]) == 2
    assert set(unsloth["values"][1]) == set(trl["values"][1]) and len(trl["values"][1]) == 5
    for key, value in trl["values"][0].items():
        assert unsloth["values"][0][key] == pytest.approx(value, rel=REL_TOL, abs=1e-5), (key, layout)
    assert trl["values"][0]["value/loss"] > 0
    for got, want in zip(unsloth["head_after_first_step"], trl["head_after_first_step"]):
        assert any(abs(w) > 1e-4 for w in want)  # the head trained (it starts at 0)
        assert _close(got, want), (layout, kind)
    # the critic adapter: drawn from the run's seed alike; its LoRA B is still 0 after the first update (the head
    # started at 0, so no gradient reached the adapter yet)
    adapters = unsloth["adapter_after_first_step"], trl["adapter_after_first_step"]
    assert len(adapters[0]) == len(adapters[1]) == (8 if kind == "adapter" else 0)
    for got, want in zip(*adapters):
        assert _close(got, want), (layout, kind)


@pytest.mark.parametrize("layout", [pytest.param("trl"), *LAYOUTS])
def test_the_head_reads_the_loss_forward_no_second_forward_of_the_policy(tmp_path_factory, layout):
    run = _layout(layout, tmp_path_factory)
    counts = {kind: run[kind]["grad_forwards_per_step"] for kind in ("no_critic", "head", "shared_head", "adapter")}
    assert counts["head"] == counts["shared_head"] == counts["no_critic"], counts
    assert all(count >= 1 for count in counts["no_critic"])
    # the adapter kind's critic is a model of its own: one more forward per loss call (2 accumulated micro-batches)
    accumulation = SAME["gradient_accumulation_steps"]
    assert counts["adapter"] == [count + accumulation for count in counts["no_critic"]], counts
