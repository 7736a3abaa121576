"""grpo_custom.search on the offline length task (tiny model, CPU, 2-3 steps per trial): a 3-trial search, its best
trial written where compare takes it, resuming a stopped study (a trial left running by a killed process is failed
and retried), pruning that ends training cleanly, and errors that name the culprit."""
from __future__ import annotations

import json

import optuna
import pytest

import grpo_custom
from grpo_custom.experiments import ExperimentError, load_variant
from grpo_custom.experiments.curves import run_value
from grpo_custom.experiments.examples import length_task_trainer

BASE = {"max_steps": 2, "eval_strategy": "no"}


def space(trial) -> dict:
    return {**BASE, "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True),
            "advantage_estimator": trial.suggest_categorical("advantage_estimator", ["grpo", "rloo"])}


def _counting(calls):
    def make_trainer(overrides, seed, output_dir):
        calls.append(dict(overrides))
        return length_task_trainer(overrides, seed, output_dir)

    return make_trainer


def test_three_trials_then_resume_retries_a_trial_a_killed_process_left_running(tmp_path):
    calls = []
    study = grpo_custom.search(_counting(calls), space, n_trials=3, metric="reward", direction="maximize",
                               output_dir=tmp_path, progress=False)
    assert (tmp_path / "study.db").exists() and len(calls) == 3
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in study.trials:  # each value is the run's own number, its overrides what make_trainer got
        result = json.loads((tmp_path / f"trials/trial_{trial.number}/result.json").read_text())
        assert trial.value == run_value(result["curves"]["reward"])
        assert trial.user_attrs["overrides"] == calls[trial.number]
        assert sorted(trial.intermediate_values) == [1, 2]  # reported at every logging step
        assert trial.intermediate_values[2] == result["curves"]["reward"][1]
    best = load_variant(tmp_path / "best_variant.yaml")
    assert best.overrides == study.best_trial.user_attrs["overrides"]
    assert study.best_value == max(trial.value for trial in study.trials)
    assert f"best trial {study.best_trial.number}" in best.note

    # A killed process leaves its trial RUNNING in the storage: made here the way Optuna does it (ask, never tell).
    stale = optuna.load_study(study_name="grpo_custom_search", storage=f"sqlite:///{tmp_path / 'study.db'}")
    killed = stale.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
                        "advantage_estimator": optuna.distributions.CategoricalDistribution(["grpo", "rloo"])})
    calls.clear()
    resumed = grpo_custom.search(_counting(calls), space, n_trials=4, metric="reward", direction="maximize",
                                 output_dir=tmp_path, progress=False)
    states = [trial.state for trial in resumed.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 3 + [optuna.trial.TrialState.FAIL,
                                                               optuna.trial.TrialState.COMPLETE]
    assert len(calls) == 1  # only the missing trial ran; the three finished ones were kept
    assert resumed.trials[4].params == killed.params and resumed.trials[4].user_attrs["retry_of_trial"] == 3

    calls.clear()  # nothing missing: nothing runs
    grpo_custom.search(_counting(calls), space, n_trials=4, metric="reward", direction="maximize",
                       output_dir=tmp_path, progress=False)
    assert calls == []
    with pytest.raises(ExperimentError, match=r"was created for 'reward' \(maximize\), not 'loss' \(minimize\)"):
        grpo_custom.search(_counting(calls), space, n_trials=5, metric="loss", direction="minimize",
                           output_dir=tmp_path, progress=False)


def test_a_pruned_trial_stops_training_cleanly_at_the_reported_step(tmp_path):
    # The length reward is at most 0, so a threshold of 1 prunes at the first report (step 1 of 3).
    study = grpo_custom.search(length_task_trainer, lambda trial: {**BASE, "max_steps": 3}, n_trials=1,
                               metric="reward", direction="maximize", output_dir=tmp_path,
                               pruner=optuna.pruners.ThresholdPruner(lower=1.0), progress=False)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [1]
    result = json.loads((tmp_path / "trials/trial_0/result.json").read_text())
    assert result["facts"]["global_steps"] == 1 and result["steps"]["train"] == [1]  # ended after step 1, cleanly
    assert not (tmp_path / "best_variant.yaml").exists()  # no finished trial to recommend


def test_search_errors_name_the_culprit(tmp_path):
    from grpo_custom import Schedule

    with pytest.raises(ExperimentError, match=r"overrides\['beta'\] = Schedule"):
        grpo_custom.search(length_task_trainer, lambda trial: {"beta": Schedule.linear(0, 1, 0, 10)}, n_trials=1,
                           metric="reward", direction="maximize", output_dir=tmp_path, progress=False)
    with pytest.raises(ExperimentError, match="direction must be one of"):
        grpo_custom.search(length_task_trainer, space, n_trials=1, metric="reward", direction="up",
                           output_dir=tmp_path, progress=False)
    with pytest.raises(ExperimentError, match=r"metric 'no_such_metric' was not logged by trial 0; logged: \["):
        grpo_custom.search(length_task_trainer, lambda trial: dict(BASE, max_steps=1), n_trials=1,
                           metric="no_such_metric", direction="maximize", output_dir=tmp_path / "m", progress=False)
