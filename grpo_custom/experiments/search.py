"""``grpo_custom.search``: hyperparameter search with Optuna over any grpo-custom option, resumable, with pruning.

The study lives in ``<output_dir>/study.db`` (SQLite): calling again with the same ``output_dir`` and study name
continues it (``n_trials`` counts the finished trials of all calls; a trial left running by a killed process is
marked failed and its parameters are tried again). Each trial is one run in ``trials/trial_<n>/`` built by
``make_trainer`` (same contract as ``compare``); ``metric`` is reported to Optuna at every logging step that logs it,
so the pruner can stop a poor trial early (training ends cleanly, then the trial is marked pruned). The best
trial's overrides go to ``best_variant.yaml``, which ``compare`` takes as a variant (``load_variant``, or ``file:``
in a YAML experiment file).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

from grpo_custom.experiments.curves import DEFAULT_SUMMARY_FRACTION, run_value
from grpo_custom.experiments.runs import execute_run
from grpo_custom.experiments.variants import RESERVED_OVERRIDES, ExperimentError, Variant
from grpo_custom.experiments.yaml_loading import write_atomically

logger = logging.getLogger(__name__)

STUDY_FILE = "study.db"
BEST_VARIANT_FILE = "best_variant.yaml"
DEFAULT_STUDY_NAME = "grpo_custom_search"
DIRECTIONS = ("maximize", "minimize")


def check_plain_overrides(overrides, where: str = "overrides") -> None:
    """Raise :class:`ExperimentError` naming the first value of ``overrides`` that is not plain data (None, bool,
    int, float, str, lists and str-keyed dicts of those): search stores overrides in SQLite and YAML."""
    if overrides is None or isinstance(overrides, (bool, int, float, str)):
        return
    if isinstance(overrides, (list, tuple)):
        for index, item in enumerate(overrides):
            check_plain_overrides(item, f"{where}[{index}]")
        return
    if isinstance(overrides, dict):
        for key, item in overrides.items():
            if not isinstance(key, str):
                raise ExperimentError(f"{where}: key {key!r} is not a string")
            check_plain_overrides(item, f"{where}[{key!r}]")
        return
    raise ExperimentError(f"{where} = {overrides!r} ({type(overrides).__name__}): search stores every trial's overrides "
                          "in its SQLite study and in best_variant.yaml, so values must be numbers, strings, "
                          "booleans, None, lists or dicts")


def _pruning_callback(trial, metric: str):
    from transformers import TrainerCallback

    class OptunaPruning(TrainerCallback):
        """Reports ``metric`` to the trial at each log that has it; stops training when the pruner says so."""

        def __init__(self):
            self.pruned_at: tuple[int, float] | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            value = (logs or {}).get(metric)
            if self.pruned_at is not None or not isinstance(value, (int, float)) or not math.isfinite(value):
                return
            trial.report(float(value), state.global_step)
            if trial.should_prune():
                self.pruned_at = (state.global_step, float(value))
                control.should_training_stop = True

    return OptunaPruning()


def _fail_stale_trials(study, storage) -> None:
    """Mark trials a killed process left RUNNING as failed, and queue their parameters to be tried again (one process
    per study: a trial another live process is running would be failed too)."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        logger.warning("search: trial %d was left running by a stopped process; marked failed, its parameters "
                       "are queued again", trial.number)
        study.enqueue_trial(trial.params, user_attrs={"retry_of_trial": trial.number}, skip_if_exists=False)


def write_best_variant(study, output_dir: Path, metric: str) -> Path | None:
    """Write the best finished trial's overrides and a note to ``output_dir/best_variant.yaml`` (None: no finished
    trial yet)."""
    import yaml
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    note = (f"best trial {best.number} of search {study.study_name!r} in {output_dir}: {metric} = {best.value:.6g} "
            f"({study.direction.name.lower()}), the mean of the last logged values of one run")
    text = yaml.safe_dump({"note": note, "overrides": best.user_attrs["overrides"]}, sort_keys=False)
    return write_atomically(Path(output_dir) / BEST_VARIANT_FILE, text)


def search(make_trainer: Callable, space: Callable, *, n_trials: int, metric: str, direction: str,
           output_dir: str | Path, seed: int = 0, study_name: str = DEFAULT_STUDY_NAME, sampler=None, pruner=None,
           summary_fraction: float = DEFAULT_SUMMARY_FRACTION, progress: bool = True):
    """Search the overrides ``space`` proposes for the best ``metric``; returns the ``optuna.Study``.

    Args:
        make_trainer: ``make_trainer(overrides, seed, output_dir) -> GRPOTrainer``, as for :func:`compare`.
        space: ``space(trial: optuna.Trial) -> dict`` of config overrides, drawn with ``trial.suggest_*`` (any
            grpo-custom option: estimator, policy loss and its options, regularizer coefficients, schedule
            parameters, ...). Values must be plain data (numbers, strings, booleans, lists, dicts).
        n_trials: how many finished (complete or pruned) trials the study should hold; a resumed study runs only
            the missing ones.
        metric: a logged metric (``"reward"``, ``"eval_reward"``, ...); a trial's value is the mean of its last
            ``summary_fraction`` logged values; it is reported at every logging step for pruning.
        direction: ``"maximize"`` or ``"minimize"``.
        output_dir: holds ``study.db``, ``trials/trial_<n>/`` and ``best_variant.yaml``.
        seed: every trial's seed (``make_trainer``'s ``seed``); also seeds the sampler.
        study_name: the study in ``study.db`` (the same name resumes it).
        sampler, pruner: Optuna's (default ``TPESampler(seed=seed + trials so far)``, ``MedianPruner()``).
        progress: Optuna's progress bar over the trials of this call.

    Raises:
        ExperimentError: bad arguments, overrides that are not a dict of plain data or set seed/output_dir, a metric
            no run logged, or a stored study of the same name with another metric or direction.
    """
    import optuna

    if not callable(space):
        raise ExperimentError(f"space must be a function trial -> overrides dict, got {space!r}")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ExperimentError(f"n_trials must be a positive int, got {n_trials!r}")
    if direction not in DIRECTIONS:
        raise ExperimentError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not isinstance(metric, str) or not metric:
        raise ExperimentError(f"metric must be a metric name, got {metric!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(output_dir / STUDY_FILE).resolve()}")
    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction, load_if_exists=True,
                                pruner=pruner if pruner is not None else optuna.pruners.MedianPruner())
    stored_metric = study.user_attrs.get("metric")
    if study.direction.name.lower() != direction or stored_metric not in (None, metric):
        raise ExperimentError(
            f"{output_dir / STUDY_FILE}: study {study_name!r} was created for {stored_metric!r} "
            f"({study.direction.name.lower()}), not {metric!r} ({direction}); use another study_name or output_dir")
    study.set_user_attr("metric", metric)
    _fail_stale_trials(study, storage)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    # A fresh seeded sampler per call, offset by the trials so far, so a resumed study does not redraw old points.
    study.sampler = sampler if sampler is not None else optuna.samplers.TPESampler(seed=seed + len(study.trials))

    def objective(trial):
        overrides = space(trial)
        where = f"trial {trial.number}: space(trial) returned"
        if not isinstance(overrides, dict):
            raise ExperimentError(f"{where} {type(overrides).__name__}, not a dict of overrides")
        check_plain_overrides(overrides, f"{where} overrides")
        reserved = sorted(set(overrides) & set(RESERVED_OVERRIDES))
        if reserved:
            raise ExperimentError(f"{where} overrides setting {reserved}; search sets seed and output_dir itself")
        trial.set_user_attr("overrides", overrides)
        folder = output_dir / "trials" / f"trial_{trial.number}"
        trial.set_user_attr("run_dir", str(folder))
        pruning = _pruning_callback(trial, metric)
        result = execute_run(make_trainer, f"trial_{trial.number}", Variant(overrides), seed, folder,
                             callbacks=(pruning,))
        if metric not in result["curves"]:
            raise ExperimentError(f"metric {metric!r} was not logged by trial {trial.number}; "
                                  f"logged: {sorted(result['curves'])}")
        if pruning.pruned_at is not None:
            step, value = pruning.pruned_at
            raise optuna.TrialPruned(f"trial {trial.number} pruned at step {step}: {metric} = {value:.6g}")
        value = run_value(result["curves"][metric], summary_fraction)
        if value is None:
            raise ExperimentError(f"trial {trial.number}: {metric!r} has no finite value in its logs")
        return value

    def save_best(study, trial):
        write_best_variant(study, output_dir, metric)

    if done < n_trials:
        study.optimize(objective, n_trials=n_trials - done, callbacks=[save_best], show_progress_bar=progress)
    write_best_variant(study, output_dir, metric)
    return study
