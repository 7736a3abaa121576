"""Under ``patch_unsloth()``: TRL's adaptive entropy controller runs inside the fast loss, and the final log entry
holds the averaged metrics stock TRL merges into it.

Stock TRL (no Unsloth imported) and the patched Unsloth trainer (Unsloth's GPU code path on CPU) each train, in a
fresh interpreter, the run of tests/unsloth/adaptive_entropy_scenarios.py: the same tiny model and seed, learning
rate 0 (so every step scores the same batch on both sides), gradient accumulation 2, ``use_adaptive_entropy=True``
with a target inside the policy's entropy range, and no ``logging_steps`` (TRL logs once at the end; Unsloth's
rewritten default logs every step). The controller's state after every optimizer step and the final log entry
must be TRL's.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from tests.helpers import run_side_scenario

# Keys only the patched trainer logs (grpo-custom's own families, Unsloth's completion_length): the parity test's.
from tests.unsloth.test_metrics_parity import GRPO_CUSTOM_PREFIXES, GRPO_CUSTOM_REWARD_QUANTILES, UNSLOTH_EXTRA_KEYS

pytestmark = pytest.mark.unsloth
ROOT = Path(__file__).resolve().parents[2]
NOT_COMPARED = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "step_time"}  # timing
ENTROPY_TOL = 1e-3  # nats: the two loss paths compute the same entropies up to float32 summation order


def _run(side: str, work: Path) -> dict:
    return run_side_scenario("tests.unsloth.adaptive_entropy_scenarios", side, work, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("adaptive_entropy")
    return _run("trl", work), _run("unsloth", work)


def test_adaptive_entropy_under_unsloth_follows_trls_coefficient_trajectory(runs):
    from tests.unsloth.adaptive_entropy_scenarios import USER_ARGS

    trl_run, unsloth_run = runs
    trl_steps, unsloth_steps = trl_run["controller"], unsloth_run["controller"]
    steps = list(range(1, USER_ARGS["max_steps"] + 1))
    assert [s["step"] for s in trl_steps] == [s["step"] for s in unsloth_steps] == steps
    target = USER_ARGS["entropy_target"]
    entropies = [s["last_world_entropy"] for s in trl_steps]
    # the run means something: the window entropy fell on both sides of the target, clear of it
    assert min(entropies) < target < max(entropies), entropies
    assert min(abs(h - target) for h in entropies) > 5 * ENTROPY_TOL, (entropies, target)
    for trl_step, unsloth_step in zip(trl_steps, unsloth_steps):
        assert unsloth_step["last_world_entropy"] == pytest.approx(trl_step["last_world_entropy"], abs=ENTROPY_TOL)
        assert unsloth_step["entropy_coef"] == pytest.approx(trl_step["entropy_coef"], abs=1e-12), unsloth_step
    # the coefficient moved both ways (the rule's two branches), by the configured delta per optimizer step
    coefs = [USER_ARGS["entropy_coef"]] + [s["entropy_coef"] for s in trl_steps]
    moves = {round(b - a, 9) for a, b in zip(coefs, coefs[1:])}
    assert moves == {USER_ARGS["entropy_coef_delta"], -USER_ARGS["entropy_coef_delta"]}


def test_final_log_entry_under_unsloth_has_trls_averaged_metrics(runs):
    trl_run, unsloth_run = runs
    # the situation of TRL's own tests: TRL logs once, at the end; Unsloth's default logs every step before that
    assert trl_run["logging_steps"] > len(trl_run["controller"]) and len(trl_run["log_history"]) == 1
    assert unsloth_run["logging_steps"] == 1 and len(unsloth_run["log_history"]) == len(unsloth_run["controller"]) + 1
    trl_final, unsloth_final = trl_run["log_history"][-1], unsloth_run["log_history"][-1]
    assert "train_loss" in trl_final and "train_loss" in unsloth_final
    for key in ("rewards/letter_fraction_reward/mean", "reward", "policy_loss", "entropy_coef", "entropy"):
        assert key in trl_final, key  # the metrics the issue names
    missing = sorted(set(trl_final) - set(unsloth_final))
    assert not missing, f"TRL's final entry has {missing}, the patched Unsloth trainer's does not"
    extra = sorted(k for k in set(unsloth_final) - set(trl_final)
                   if k not in UNSLOTH_EXTRA_KEYS and not k.startswith(GRPO_CUSTOM_PREFIXES)
                   and not (k.startswith("rewards/") and k.endswith(GRPO_CUSTOM_REWARD_QUANTILES)))
    assert not extra, f"keys in the final entry that neither TRL nor grpo-custom logs: {extra}"
    differing = {key: (trl_final[key], unsloth_final[key]) for key in trl_final
                 if key not in NOT_COMPARED and trl_final[key] is not None
                 and not math.isclose(trl_final[key], unsloth_final[key], rel_tol=2e-3, abs_tol=1e-5)}
    assert not differing, f"same run, different final values (TRL, Unsloth): {differing}"
    # the per-step entries Unsloth's schedule writes keep their own values (nothing moved out of them)
    assert all("reward" in entry for entry in unsloth_run["log_history"][:-1])
