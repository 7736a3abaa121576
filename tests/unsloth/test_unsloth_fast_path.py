"""grpo-custom inside Unsloth's generated trainer, on CPU (UNSLOTH_ALLOW_CPU=1, GUIDE §2).

Each scenario of tests/unsloth_scenarios.py runs in a fresh interpreter; these tests assert on what
it reports.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import grpo_custom

pytestmark = [pytest.mark.unsloth,
              pytest.mark.skipif(importlib.util.find_spec("unsloth") is None,
                                 reason="Unsloth is not installed (a plain-trl set of the support matrix)")]
ROOT = Path(__file__).resolve().parents[2]
_cache: dict[str, dict] = {}
# Unsloth's padded mini-batch loop, and its defaults on a GPU: sequence packing + prefix grouper
LOSS_LAYOUTS = pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])


def run_scenario(name: str, tmp_path_factory, *, compile_loss: bool = False, packing: bool = False) -> dict:
    """Run one scenario in a subprocess with Unsloth's CPU spoof; cached per session.

    ``packing`` turns on Unsloth's sequence packing and prefix grouper (its defaults, which it engages on
    CPU too); otherwise its padded loop runs.
    """
    key = f"{name}/packed" if packing else name
    if key in _cache:
        return _cache[key]
    work = tmp_path_factory.mktemp(f"unsloth_{name}{'_packed' if packing else ''}")
    env = {
        **os.environ,
        "UNSLOTH_ALLOW_CPU": "1",
        "UNSLOTH_COMPILE_DISABLE": "1",
        "UNSLOTH_COMPILE_LOCATION": str(work / "compiled"),
        "UNSLOTH_GRPO_SEQ_PACKING": "1" if packing else "0",
        "UNSLOTH_GRPO_PREFIX_GROUPER": "1" if packing else "0",
        "GRPO_CUSTOM_CACHE_DIR": str(work / "fork_cache"),
        # Unsloth's model-side patches stay eager; compile_loss scenarios turn its loss compile back on
        # (tests/unsloth_scenarios.py: _compile_unsloth_loss_for_real)
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    if not compile_loss:
        env["TORCHDYNAMO_DISABLE"] = "1"  # torch.compile off: same math, much faster on CPU
    out = work / "result.json"
    completed = subprocess.run([sys.executable, "-m", "tests.unsloth_scenarios", name, str(out)], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=900)
    if completed.returncode != 0:
        pytest.fail(f"scenario {name} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}")
    _cache[key] = json.loads(out.read_text())
    return _cache[key]


def test_unsloth_first_generates_fork_with_hooks_and_only_our_changes(tmp_path_factory):
    result = run_scenario("unsloth_first", tmp_path_factory)
    assert result["trainer_class"] == "UnslothGRPOTrainer"
    assert all(result["hooks"].values()), result["hooks"]
    assert result["trl_names_are_fork"] and result["grpo_custom_names_are_fork"] and result["idempotent"]
    assert all(result["zoo_functions_wrapped"])  # entropy weights, entropy bonus, entropy log-softmax
    # Unsloth rewrote the fork exactly as it rewrites stock TRL: the generated files differ only by our edits,
    # our config fields, the import list and TRL's class docstring (which Unsloth drops only from the stock class)
    import trl

    from grpo_custom.fork.config import GRPO_CUSTOM_FIELDS
    from grpo_custom.patches import GRPO_TRAINER_EDITS

    edit_lines = {line.strip() for edit in GRPO_TRAINER_EDITS for line in edit.replacement.splitlines()}
    docstring_lines = {line.strip() for line in (trl.GRPOTrainer.__doc__ or "").splitlines()}
    replaced_lines = {line.strip() for edit in GRPO_TRAINER_EDITS for line in edit.anchor.splitlines()
                      if line.strip() not in edit_lines}  # what an edit replaces instead of inserting around
    for line in result["diff"]["removed"]:
        assert line.startswith("from trl.trainer.grpo_trainer import") or line.strip() in {
            '""""""', "if self.beta == 0.0:", "if self.beta != 0.0:",
            "vllm_importance_sampling_cap = vllm_importance_sampling_cap,**kwargs)"} | replaced_lines, line
    for line in result["diff"]["added"]:
        stripped = line.strip()
        assert (not stripped or stripped in edit_lines or stripped in docstring_lines or stripped == '"""'
                or line.startswith("from trl.trainer.grpo_trainer import")
                or any(name in stripped for name in (*GRPO_CUSTOM_FIELDS, "vllm_importance_sampling_cap"))), line
    added = "\n".join(result["diff"]["added"])
    for hook in result["hooks"]:
        assert f"grpo_custom_hooks.{hook}(" in added


@LOSS_LAYOUTS
def test_fork_with_default_settings_equals_stock_unsloth(tmp_path_factory, packing):
    result = run_scenario("unsloth_first", tmp_path_factory, packing=packing)
    assert len(result["stock_losses"]) == 3
    assert result["fork_losses"] == result["stock_losses"]
    assert result["fork_grad_norms"] == result["stock_grad_norms"]
    assert result["weights_equal"]
    assert result["fork_trainable_changed"] > 0 and result["fork_frozen_changed"] == 0
    assert result["fork_logged_advantages"]


def test_revert_restores_stock_unsloth_and_patch_can_be_reapplied(tmp_path_factory):
    result = run_scenario("unsloth_first", tmp_path_factory)
    assert all(result["revert"].values()), result["revert"]
    assert result["repatch_after_revert"]


def test_grpo_custom_imported_first(tmp_path_factory):
    result = run_scenario("grpo_custom_first", tmp_path_factory)
    assert result["unsloth_imported"] and result["trl_name_is_fork"] and result["grpo_custom_name_is_fork"]
    assert all(result["hooks"].values()) and result["doctor_active"]
    assert result["trainable_changed"] > 0 and result["frozen_changed"] == 0
    assert result["reverted_to_stock_trl"]


def test_broken_patches_raise_by_name_and_leave_nothing_patched(tmp_path_factory):
    from grpo_custom.fork.versions import load_matrix

    result = run_scenario("broken", tmp_path_factory)
    assert "unsloth 2099.1.1" in result["version_error"]
    for version_set in load_matrix().unsloth_sets:  # the error lists every supported set, from the matrix
        assert version_set.describe() in result["version_error"]
    assert "GRPO_CUSTOM_ALLOW_UNTESTED_VERSIONS=1" in result["version_error"]
    assert result["version_override_warned"]
    assert "hook_that_does_not_exist" in result["dropped_hook_error"]
    assert "grpo_accumulated_loss(" in result["lost_fast_loss_error"]
    assert all(result["after_dropped_hook"].values()) and all(result["after_lost_fast_loss"].values())
    assert "entropy_log_softmax_of_a_future_unsloth" in result["moved_entropy_import_error"]
    assert "one-pass entropy kernel" in result["moved_entropy_import_error"]
    assert all(result["after_moved_entropy_import"].values())


@pytest.mark.slow
@LOSS_LAYOUTS
def test_every_estimator_and_regularizer_trains_inside_the_compiled_fast_loss(tmp_path_factory, packing):
    runs = dict(run_scenario("train_registry", tmp_path_factory, compile_loss=True, packing=packing))
    runs.pop("recompiles")
    expected = set(grpo_custom.list_advantage_estimators()) | set(grpo_custom.list_regularizers()) | {"kl_reward"}
    assert set(runs) == expected
    for name, run in runs.items():
        assert run["trainable_changed"] > 0, name
        assert run["frozen_changed"] == 0, name
        assert run["finite_losses"], name
        assert run["schedule_weights"] == [0.0, 0.5], (name, run["schedule_weights"])
    for name in grpo_custom.list_regularizers():
        prefix = "regularizers/kl" if name == "kl" else f"regularizers/{name}"
        assert {f"{prefix}/coef", f"{prefix}/value"} <= set(runs[name]["metric_keys"]), (name, runs[name]["metric_keys"])
    assert "regularizers/kl/loss" in runs["kl"]["metric_keys"]
    assert runs["kl"]["kl_coef"] == pytest.approx([0.05, 0.075])  # Schedule.linear(0.05, 0.1, 0, 2) at steps 0, 1


def test_regularizer_gradients_inside_fast_loss_equal_full_logits_reference(tmp_path_factory):
    errors = run_scenario("gradients", tmp_path_factory)
    assert len(errors) == 4 * 11
    assert {key.split('/')[1] for key in errors} >= {"entropy", "entropy_one_pass"}
    for key, relative_error in errors.items():
        assert relative_error < 1e-5, (key, relative_error)


def test_honest_config_reports_unsloth_rewrites(tmp_path_factory):
    result = run_scenario("honest_config", tmp_path_factory)
    assert "mask_truncated_completions" in result["differences"]
    assert result["differences"]["mask_truncated_completions"] == ["False", "True"]
    assert result["trainer"]["advantage_estimator"] == "'grpo'"


def test_unsloth_loss_is_compiled_for_real_and_a_scheduled_coefficient_does_not_recompile_it(tmp_path_factory):
    # UNSLOTH_COMPILE_DISABLE=1 is set (model patches eager); from unsloth_zoo 2026.10.9 it would also leave the
    # loss uncompiled, which the scenario undoes: graphs > 0 on every supported version
    result = run_scenario("compile_loss", tmp_path_factory, compile_loss=True)
    coefs = [c for c in result["coefs"] if c is not None]
    assert len(set(coefs)) == 5  # the coefficient changed at every step
    graphs = result["graphs_after_each_step"]
    assert graphs[0] > 0, "the chunk loss was not compiled"
    assert graphs[-1] == graphs[1], graphs  # no new graph after the first steps, although the coefficient moved


# Under Unsloth's 16-bit autocast two kernels that round their backward products differently agree to 16-bit
# resolution: unsloth_zoo 2026.10.7 rounds them to float16 (measured 1.1e-3 vs ours), 2026.10.8 keeps them in
# float32 like ours (bitwise equal). Two float16 ulps (2**-9); in float32 the math must agree to 1e-4.
FP16_RESOLUTION = 2.0**-9


@LOSS_LAYOUTS
def test_entropy_kernel_option_picks_the_kernel_and_both_give_the_same_gradients(tmp_path_factory, packing):
    result = run_scenario("entropy_kernels", tmp_path_factory, packing=packing)
    # keep_log_probs runs the one-pass kernel for every entropy call (one 4-row mini-batch, or the packed call);
    # auto does so only where the LM head runs in float32 and the installed Unsloth holds float32 logits of those
    # tokens anyway: its chunked scorer keeps them (2026.10.7/.8 at these sizes), or its fused-linear scorer
    # (2026.10.9) takes all of them in one row chunk. Under Unsloth's 16-bit autocast ("auto", and TRL's
    # entropy_coef, which runs auto) the head runs in float16: Unsloth's own entropy kernel.
    for name in ("auto", "trl_entropy_coef_only"):
        assert result[name]["auto_inputs"]["float32_logits"] == [False], result[name]
    assert result["auto_float32"]["auto_inputs"]["float32_logits"] == [True], result["auto_float32"]
    float32_auto_one_pass = result["unsloth_scorer_keeps_logits"] or (
        result["auto_float32"]["auto_inputs"]["fused_holds_all_rows"] == [True])
    assert float32_auto_one_pass  # every supported Unsloth holds these few tokens' float32 logits at once
    expected_one_pass = {"keep_log_probs": True, "keep_log_probs_float32": True, "auto": False,
                         "trl_entropy_coef_only": False, "auto_float32": True}
    for name, one_pass in expected_one_pass.items():
        calls = result[name]["calls"]
        assert calls["entropy_calls"] > 0, (name, calls)
        assert calls["one_pass"] == (calls["entropy_calls"] if one_pass else 0), (name, calls)
        # the packed path scores all completions as one row; the padded loop as one 4-row mini-batch
        assert set(calls["rows"]) == ({1} if packing else {4}), (name, calls["rows"])
    for name in ("recompute", "recompute_float32"):
        assert result[name]["calls"]["entropy_calls"] > 0 and result[name]["calls"]["one_pass"] == 0
    assert result["no_entropy"]["calls"] == {"one_pass": 0, "entropy_calls": 0, "rows": []}
    assert result["trl_entropy_coef_only"]["gradient_difference_vs_no_entropy"] > 1e-3
    for name in ("keep_log_probs", "recompute", "auto", "trl_entropy_coef_only", "no_entropy"):
        assert result[name]["trainable_changed"] > 0 and result[name]["frozen_changed"] == 0, name
    assert result["gradient_tensors"] > 0 and result["gradient_scale"] > 0
    for name in ("keep_log_probs_float32", "auto_float32"):
        assert result[name]["gradient_relative_error"] < 1e-4, (name, result[name])
    for name in ("keep_log_probs", "auto"):
        assert result[name]["gradient_relative_error"] < FP16_RESOLUTION, (name, result[name]["gradient_relative_error"])
        assert result[name]["loss"] == pytest.approx(result["recompute"]["loss"], rel=1e-5, abs=1e-7)
        assert result[name]["entropy_metric"] == pytest.approx(result["recompute"]["entropy_metric"], rel=1e-5)
    assert result["auto"]["gradient_relative_error"] == 0.0  # Unsloth's own kernel, as with "recompute"


def test_scenario_runner_starts_after_every_scenario_is_registered():
    """``python -m tests.unsloth_scenarios NAME`` runs main() where the module's last statement stands:
    a scenario defined below it (as gpu_4bit once was) would be unknown to the runner."""
    import ast

    tree = ast.parse((ROOT / "tests" / "unsloth_scenarios.py").read_text())
    last = tree.body[-1]
    assert isinstance(last, ast.If) and "__main__" in ast.unparse(last.test), ast.unparse(last)[:200]
