"""``grpo-custom compare FILE`` and ``grpo-custom search FILE``: run an experiment file and print where its results
went (a bad file: one line naming the file and the key, exit status 2)."""
from __future__ import annotations

import sys


def run_compare_command(path: str, stream=sys.stdout) -> int:
    """Run the compare file ``path`` (``config_file.load_compare_file``); print the summary lines and the report paths.

    Returns the exit status: 0, or 2 for a bad file or a refused comparison (message on stderr).
    """
    from grpo_custom.experiments.compare import compare
    from grpo_custom.experiments.config_file import load_compare_file
    from grpo_custom.experiments.variants import ExperimentError

    try:
        experiment = load_compare_file(path)
        report = compare(experiment.make_trainer, experiment.variants, experiment.seeds, experiment.output_dir,
                         **experiment.options)
    except ExperimentError as error:
        print(f"grpo-custom compare: error: {error}", file=sys.stderr)
        return 2
    first = report["first_variant"]
    for metric in report["metrics"]:
        for name, variant in report["variants"].items():
            entry = variant["summary"][metric]
            line = f"{metric:<28} {name:<16} mean {entry['mean']:.4g}" if entry["mean"] is not None else \
                f"{metric:<28} {name:<16} (no value)"
            difference = (variant["difference_to_first"] or {}).get(metric)
            if difference and difference["mean"] is not None:
                interval = difference["ci95"]
                line += f"   Δ vs {first} {difference['mean']:+.4g}" + (
                    f" [{interval[0]:+.4g}, {interval[1]:+.4g}]" if interval else " (interval undefined: one seed)")
            print(line, file=stream)
    verdict = {True: "yes", False: "NO", None: "not checked"}[report["determinism"]["deterministic"]]
    print(f"deterministic: {verdict}", file=stream)
    print(f"report: {experiment.output_dir / 'report.md'} (and report.json, plots/)", file=stream)
    return 0


def run_search_command(path: str, stream=sys.stdout) -> int:
    """Run the search file ``path`` (``config_file.load_search_file``); print the best trial and where its overrides
    went. Returns the exit status: 0, or 2 for a bad file (message on stderr)."""
    from optuna.trial import TrialState

    from grpo_custom.experiments.config_file import load_search_file
    from grpo_custom.experiments.search import BEST_VARIANT_FILE, search
    from grpo_custom.experiments.variants import ExperimentError

    try:
        experiment = load_search_file(path)
        study = search(experiment.make_trainer, experiment.space, output_dir=experiment.output_dir,
                       **experiment.options)
    except ExperimentError as error:
        print(f"grpo-custom search: error: {error}", file=sys.stderr)
        return 2
    states = [trial.state for trial in study.trials]
    print(f"trials: {states.count(TrialState.COMPLETE)} complete, {states.count(TrialState.PRUNED)} pruned, "
          f"{states.count(TrialState.FAIL)} failed", file=stream)
    if states.count(TrialState.COMPLETE):
        best = study.best_trial
        print(f"best trial {best.number}: {experiment.options['metric']} = {best.value:.6g}, "
              f"overrides {best.user_attrs['overrides']}", file=stream)
        print(f"best variant: {experiment.output_dir / BEST_VARIANT_FILE}", file=stream)
    return 0
