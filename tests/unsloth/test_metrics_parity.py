"""Under ``patch_unsloth()`` the trainer logs what stock TRL logs, with TRL's names and meanings.

Stock TRL (no Unsloth imported) and the patched Unsloth trainer (Unsloth's GPU code path on CPU) train the
same tiny model from the same seed on each configuration of tests/unsloth/metrics_parity_scenarios.py, each
side in a fresh interpreter. Parity, not a hand-written list: every key TRL logs at a training step must be
logged under Unsloth; the only extra keys allowed are grpo-custom's own and Unsloth's ``completion_length``.
Meaning: both sides generate and score the same first batch from the same policy, so at the first logged
step every value determined by the batch and the policy (rewards, lengths, entropy, the KL of ``beta``)
must be equal; loss-dependent values (loss, grad norm, clip ratios) are compared where Unsloth computes the
loss type as TRL does.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from tests.helpers import run_side_scenario

pytestmark = pytest.mark.unsloth
ROOT = Path(__file__).resolve().parents[2]
GRPO_CUSTOM_PREFIXES = ("advantages/", "reward_health/", "reward_errors/", "regularizers/", "schedule/", "tasks/")
GRPO_CUSTOM_REWARD_QUANTILES = ("/q10", "/q50", "/q90")  # grpo-custom's rewards/<function>/q* (issue 23)
UNSLOTH_EXTRA_KEYS = {"completion_length"}  # Unsloth's own: mean completion length of the micro-batch
NOT_COMPARED = {"step_time", "epoch", "learning_rate"}  # timing, and bookkeeping that is the same by construction
# Unsloth computes these loss types differently from TRL 1.15 (cispo: its clip bound; dr_grpo: its normalizer),
# so their loss-dependent values legitimately differ; their keys must still be there.
LOSS_DEPENDENT = {"loss", "grad_norm", "policy_loss", "clip_ratio/low_mean", "clip_ratio/low_min", "clip_ratio/high_mean",
                  "clip_ratio/high_max", "clip_ratio/region_mean", "cispo_clip_ratio", "vespo/phi_seq_mean"}
LOSS_DIFFERS_UNDER_UNSLOTH = {"cispo", "dr_grpo_beta"}
REL_TOL, ABS_TOL = 2e-3, 1e-5


def _run(side: str, work: Path) -> dict:
    return run_side_scenario("tests.unsloth.metrics_parity_scenarios", side, work)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    work = tmp_path_factory.mktemp("metrics_parity")
    return _run("trl", work), _run("unsloth", work)


def _configs():
    sys.path.insert(0, str(ROOT))
    from tests.unsloth.metrics_parity_scenarios import CONFIGS

    return list(CONFIGS)


@pytest.mark.parametrize("config", _configs())
def test_unsloth_logs_every_trl_key_and_no_foreign_extra(logs, config):
    trl_logs, unsloth_logs = logs
    assert len(trl_logs[config]) == len(unsloth_logs[config]) > 0
    for trl_entry, unsloth_entry in zip(trl_logs[config], unsloth_logs[config]):
        missing = sorted(set(trl_entry) - set(unsloth_entry))
        assert not missing, f"{config}: TRL logs {missing}, the patched Unsloth trainer does not"
        extra = sorted(key for key in set(unsloth_entry) - set(trl_entry)
                       if key not in UNSLOTH_EXTRA_KEYS and not key.startswith(GRPO_CUSTOM_PREFIXES)
                       and not (key.startswith("rewards/") and key.endswith(GRPO_CUSTOM_REWARD_QUANTILES)))
        assert not extra, f"{config}: keys TRL does not log and grpo-custom does not own: {extra}"


@pytest.mark.parametrize("config", _configs())
def test_first_step_values_have_trls_meaning(logs, config):
    trl_logs, unsloth_logs = logs
    trl_entry, unsloth_entry = trl_logs[config][0], unsloth_logs[config][0]
    skip = NOT_COMPARED | (LOSS_DEPENDENT if config in LOSS_DIFFERS_UNDER_UNSLOTH else set())
    differing = {key: (trl_entry[key], unsloth_entry[key]) for key in trl_entry
                 if key not in skip and key in unsloth_entry
                 and not math.isclose(trl_entry[key], unsloth_entry[key], rel_tol=REL_TOL, abs_tol=ABS_TOL)}
    assert not differing, f"{config}: same batch and policy, different values (TRL, Unsloth): {differing}"


def test_kl_is_logged_only_with_beta_and_once(logs):
    from tests.unsloth.metrics_parity_scenarios import CONFIGS

    _, unsloth_logs = logs
    for config, (_, overrides) in CONFIGS.items():
        has_kl = all("kl" in entry for entry in unsloth_logs[config])
        assert has_kl == (overrides.get("beta", 0.0) != 0.0), config

