"""``grpo_custom.compare``: run every variant on every seed under the same conditions and report the differences.

Each run is built by the user's ``make_trainer(overrides, seed, output_dir)``, which must pass ``seed`` into the
config as ``seed`` and ``data_seed`` (TRL's GRPO sampler orders the prompts by ``args.seed``: the same order for
every variant on one seed) and ``output_dir`` as the run's folder; the runs are checked for that, and for the same
training data, evaluation set and reward functions across variants (``checks.py``). Results go to ``output_dir``:
``runs/<variant>/seed_<seed>/result.json`` per run, ``report.json``, ``report.md`` and ``plots/*.png``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

from grpo_custom.experiments.checks import ComparabilityCheck, determinism_evidence
from grpo_custom.experiments.curves import DEFAULT_SUMMARY_FRACTION
from grpo_custom.experiments.runs import execute_run, load_finished
from grpo_custom.experiments.variants import ExperimentError, normalize_variants, overrides_key
from grpo_custom.experiments.yaml_loading import write_atomically, write_json_atomically

logger = logging.getLogger(__name__)

RERUN_FOLDER = "_determinism_rerun"


def check_seeds_argument(seeds) -> list[int]:
    """``seeds`` as a list of distinct ints.

    Raises:
        ExperimentError: empty, not a list of ints, or a seed repeated.
    """
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(
            isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds):
        raise ExperimentError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ExperimentError(f"seeds repeat a value: {list(seeds)}")
    return list(seeds)


def run_folder(output_dir: Path, variant: str, seed: int) -> Path:
    """Where one run of ``compare`` lives."""
    return Path(output_dir) / "runs" / variant / f"seed_{seed}"


def _select_metrics(results: dict, metrics: list[str] | None) -> list[str]:
    logged = sorted({name for seeds in results.values() for result in seeds.values() for name in result["curves"]})
    if metrics is None:
        return logged
    missing = [metric for metric in metrics if metric not in logged]
    if missing:
        raise ExperimentError(f"metrics {missing} were not logged by any run; logged: {logged}")
    return list(metrics)


def compare(make_trainer: Callable, variants: dict, seeds, output_dir: str | Path, *, metrics: list[str] | None = None,
            summary_fraction: float = DEFAULT_SUMMARY_FRACTION, check_determinism: bool = True, plots: bool = True,
            progress: bool = True) -> dict:
    """Train every variant on every seed with the same data order, evaluation set and criteria; write the report.

    Args:
        make_trainer: ``make_trainer(overrides: dict, seed: int, output_dir: str) -> GRPOTrainer`` builds one run.
            It must put ``seed`` into the config as ``seed`` and ``data_seed``, pass ``output_dir`` on, and build the
            same training and evaluation data for every variant (all checked; ``transformers.set_seed(seed)`` runs
            just before it is called). ``grpo_custom.experiments.examples.length_task_trainer`` is one.
        variants: ``{name: overrides dict}``, ``{name: {"overrides": {...}, "note": "purpose, expected effect"}}``
            or ``{name: Variant(...)}``; the first is the baseline the others are compared with.
        seeds: the seeds every variant runs (ints).
        output_dir: the experiment's folder; calling again with it reuses every finished run (a run killed or
            crashed before its ``result.json`` was written is trained again, a run whose overrides changed too).
        metrics: the metrics to summarize and plot (default: every logged metric); each must have been logged.
        summary_fraction: each run's number for a metric is the mean of the last ``summary_fraction`` of its logged
            values (``curves.run_value``).
        check_determinism: train the first variant's first seed once more (in ``runs/_determinism_rerun``) and
            compare the curves; identical variants are compared in any case. The report says what was found.
        plots: write ``plots/<metric>.png`` (mean and 95% band across seeds per variant).
        progress: a progress bar over the runs (on stderr).

    Returns:
        The report (also in ``output_dir/report.json``; ``report.md`` is the readable form).

    Raises:
        ExperimentError: bad variants/seeds/metrics, a trainer that ignores its seed or folder, or a run on other
            training data or another evaluation set than the first run (refused before it trains).
    """
    from tqdm.auto import tqdm

    from grpo_custom.experiments.environment import environment_report
    from grpo_custom.experiments.plots import plot_metrics
    from grpo_custom.experiments.report import build_report, render_markdown

    variants = normalize_variants(variants)
    seeds = check_seeds_argument(seeds)
    if not 0.0 < summary_fraction <= 1.0:
        raise ExperimentError(f"summary_fraction must be in (0, 1], got {summary_fraction}")
    if metrics is not None and (not isinstance(metrics, (list, tuple)) or not all(isinstance(m, str) for m in metrics)):
        raise ExperimentError(f"metrics must be a list of metric names, got {metrics!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    keys = {name: overrides_key(variant.overrides) for name, variant in variants.items()}
    first = next(iter(variants))
    plan = [(name, seed, run_folder(output_dir, name, seed)) for name in variants for seed in seeds]
    if check_determinism:
        plan.append((first, seeds[0], output_dir / "runs" / RERUN_FOLDER / first / f"seed_{seeds[0]}"))
    checker = ComparabilityCheck()
    results = {name: {} for name in variants}
    statuses = {name: {} for name in variants}
    rerun = None
    with tqdm(total=len(plan), desc="runs", unit="run", disable=not progress, file=sys.stderr) as bar:
        for index, (name, seed, folder) in enumerate(plan):
            is_rerun = check_determinism and index == len(plan) - 1
            where = f"variant {name!r}, seed {seed}" + (" (determinism rerun)" if is_rerun else "")
            bar.set_postfix_str(where)
            result = load_finished(folder, keys[name])
            if result is not None:
                checker.check(result["trainer"], where)
                status = "reused"
            else:
                result = execute_run(make_trainer, name, variants[name], seed, folder,
                                     before_training=lambda facts, where=where: checker.check(facts, where))
                status = "trained"
            logger.info("%s: %s", where, status)
            if is_rerun:
                rerun = (name, seed, result)
            else:
                results[name][str(seed)] = result
                statuses[name][str(seed)] = status
            bar.update(1)
    selected = _select_metrics(results, None if metrics is None else list(metrics))
    plot_paths = {}
    if plots:
        written = plot_metrics(results, selected, output_dir / "plots")
        plot_paths = {metric: str(Path(path).relative_to(output_dir)) for metric, path in written.items()}
    report = build_report(results=results, variants=variants, seeds=seeds, metrics=selected, fraction=summary_fraction,
                          determinism=determinism_evidence(results, keys, rerun), checks=checker.summary(),
                          environment=environment_report(), plots=plot_paths, statuses=statuses)
    write_json_atomically(output_dir / "report.json", report)
    write_atomically(output_dir / "report.md", render_markdown(report))
    for warning in report["checks"]["warnings"]:
        logger.warning("compare: %s", warning)
    return report
