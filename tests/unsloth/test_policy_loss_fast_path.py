"""Policy losses inside Unsloth's fast loss on CPU (UNSLOTH_ALLOW_CPU=1): training, gradients, schedules."""
from __future__ import annotations

import pytest
import torch

import grpo_custom
from tests.unsloth.test_unsloth_fast_path import LOSS_LAYOUTS, run_scenario

pytestmark = pytest.mark.unsloth


@LOSS_LAYOUTS
def test_every_policy_loss_trains_inside_unsloths_fast_loss(tmp_path_factory, packing):
    runs = run_scenario("policy_losses", tmp_path_factory, packing=packing)
    for name in grpo_custom.list_policy_losses():
        run = runs[name]
        assert run["trainable_changed"] > 0 and run["frozen_changed"] == 0, (name, run)
        assert run["finite_losses"] and run["regularizer_logged"], (name, run)
        _, metrics = grpo_custom.get_policy_loss(name)(*([torch.zeros(1, 2)] * 3), torch.ones(1, 2))
        if name != "ppo_clip":  # ppo_clip with the config's trust region is Unsloth's own computation
            assert {f"policy_loss/{key}" for key in metrics} <= set(run["metric_keys"]), (name, run["metric_keys"])


@LOSS_LAYOUTS
def test_ppo_clip_through_the_policy_term_matches_stock_unsloth(tmp_path_factory, packing):
    """The registered ppo_clip run beside Unsloth's loss (its own term zeroed) trains like Unsloth's own term.
    (With the default, policy_loss="ppo_clip", Unsloth's code runs unchanged: bitwise, test_fast_path.py.)"""
    result = run_scenario("policy_losses", tmp_path_factory, packing=packing)["ppo_clip_term_vs_stock"]
    term, stock = result["losses"]
    assert len(stock) == 3 and term == pytest.approx(stock, rel=1e-5, abs=1e-7)
    term, stock = result["grad_norms"]
    assert term == pytest.approx(stock, rel=1e-4)
    assert result["weight_error"] < 1e-4


def test_policy_gradients_inside_fast_loss_equal_full_logits_reference(tmp_path_factory):
    result = run_scenario("policy_gradients", tmp_path_factory)
    errors, effects = result["errors"], result["policy_effect"]
    assert len(errors) == 5 * len(grpo_custom.list_policy_losses())
    for key, relative_error in errors.items():
        assert relative_error < 1e-5, (key, relative_error)
        assert effects[key] > 1e-2, (key, effects[key])  # the policy term is a real part of the gradient


@pytest.mark.slow
def test_scheduled_trust_region_is_logged_and_does_not_recompile(tmp_path_factory):
    result = run_scenario("policy_schedule", tmp_path_factory, compile_loss=True)
    assert result["epsilon_low"] == pytest.approx(result["want_epsilon"]) and len(result["steps"]) == 5
    assert result["clip_ratio_c"] == pytest.approx(result["want_clip_ratio_c"])
    assert len(set(result["epsilon_low"])) == 5  # it moved every step
    graphs = result["graphs_after_each_step"]
    assert graphs[0] > 0, "the chunk loss was not compiled"
    assert graphs[-1] == graphs[1], graphs
    assert result["trainable_changed"] > 0 and result["frozen_changed"] == 0
