"""The experiment report: ``report.json`` (everything, machine-readable) and ``report.md`` (the same for reading).

Per variant: its overrides and note, every run's curves and facts (keyed by the seed as a string), per metric a
summary across seeds (each run contributes one number, see ``curves.run_value``; mean and Student-t 95% interval)
and the difference to the first variant with its interval (paired by seed when both ran the same seeds).
"""
from __future__ import annotations

import datetime

from grpo_custom.experiments.curves import run_value
from grpo_custom.experiments.fingerprints import config_diff, overrides_diff
from grpo_custom.experiments.stats import difference_interval, mean_interval
from grpo_custom.experiments.variants import plain

REPORT_FORMAT = 1


def _per_seed_values(seeds: dict, metric: str, fraction: float) -> dict[str, float]:
    values = {seed: run_value(result["curves"].get(metric, []), fraction) for seed, result in seeds.items()}
    return {seed: value for seed, value in values.items() if value is not None}


def build_report(*, results: dict, variants: dict, seeds: list[int], metrics: list[str], fraction: float,
                 determinism: dict, checks: dict, environment: dict, plots: dict, statuses: dict) -> dict:
    """The content of ``report.json`` (see the module docstring); ``results`` is ``{variant: {seed (str): result}}``,
    ``statuses`` ``{variant: {seed (str): "trained" | "reused"}}``, ``plots`` ``{metric: path relative to the report}``."""
    first = next(iter(variants))
    report_variants = {}
    for name, variant in variants.items():
        runs = results[name]
        summary, difference = {}, {}
        for metric in metrics:
            values = _per_seed_values(runs, metric, fraction)
            summary[metric] = {**mean_interval(list(values.values())).as_dict(), "values": values}
            if name != first:
                interval, pairing = difference_interval(values, _per_seed_values(results[first], metric, fraction))
                difference[metric] = {**interval.as_dict(), "pairing": pairing}
        some_seed = next(iter(runs))
        report_variants[name] = {
            "overrides": plain(variant.overrides),
            "note": variant.note,
            "seeds": {seed: {"curves": result["curves"], "steps": result["steps"], "facts": result["facts"],
                             "status": statuses[name][seed]} for seed, result in runs.items()},
            "summary": summary,
            "difference_to_first": difference if name != first else None,
            "config_diff_to_first": None if name == first else {
                "overrides": overrides_diff(variant.overrides, variants[first].overrides),
                "config": config_diff(runs[some_seed]["trainer"]["config"],
                                      results[first][some_seed]["trainer"]["config"]),
            },
        }
    return {
        "format": REPORT_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seeds": list(seeds),
        "first_variant": first,
        "metrics": list(metrics),
        "summary_statistic": (f"each run contributes the mean of the last {fraction:.0%} of a metric's logged values "
                              "(at least one); across seeds: the mean and its Student-t 95% confidence interval "
                              "(undefined with one seed); differences to the first variant are paired by seed when "
                              "both ran the same seeds, else Welch's interval"),
        "variants": report_variants,
        "determinism": determinism,
        "checks": checks,
        "environment": environment,
        "plots": plots,
    }


def _number(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def _interval(entry: dict) -> str:
    return "undefined (1 seed)" if entry.get("ci95") is None and entry.get("n") == 1 else (
        "–" if entry.get("ci95") is None else f"[{_number(entry['ci95'][0])}, {_number(entry['ci95'][1])}]")


def render_markdown(report: dict) -> str:
    """``report.md``: the summary table, each variant's note and config diff against the first, determinism, the
    checks, the runs' facts, the environment and the date."""
    first = report["first_variant"]
    lines = [f"# Experiment report ({report['created']})", "",
             f"Variants: {', '.join(report['variants'])} (differences are against `{first}`); seeds: "
             f"{', '.join(map(str, report['seeds']))}.", "", report["summary_statistic"] + ".", "",
             "## Summary", "",
             "| metric | variant | seeds | mean | 95% CI | Δ vs first | 95% CI of Δ | pairing |",
             "|---|---|---|---|---|---|---|---|"]
    for metric in report["metrics"]:
        for name, variant in report["variants"].items():
            entry = variant["summary"][metric]
            diff = (variant["difference_to_first"] or {}).get(metric)
            lines.append(f"| `{metric}` | {name} | {entry['n']} | {_number(entry['mean'])} | {_interval(entry)} | "
                         + (f"{_number(diff['mean'])} | {_interval(diff)} | {diff['pairing']} |" if diff else
                            "(first) | | |"))
    lines += ["", "## Variants", ""]
    for name, variant in report["variants"].items():
        lines += [f"### {name}", "", f"Note: {variant['note'] or '(none)'}", "",
                  f"Overrides: `{variant['overrides']}`", ""]
        diff = variant["config_diff_to_first"]
        if diff is None:
            lines += ["The first variant: the others are compared with it.", ""]
            continue
        lines += [f"Overrides that differ from `{first}` ({first} → {name}):", ""]
        lines += [f"- `{key}`: `{a}` → `{b}`" for key, (a, b) in diff["overrides"].items()] or ["- none"]
        lines += ["", f"Trainer config fields that differ from `{first}`:", ""]
        lines += [f"- `{key}`: `{a}` → `{b}`" for key, (a, b) in diff["config"].items()] or ["- none"]
        lines.append("")
    determinism = report["determinism"]
    verdict = {True: "yes", False: "NO", None: "not checked"}[determinism["deterministic"]]
    lines += ["## Determinism", "", f"Deterministic: **{verdict}**. Method: {determinism['method']}.", ""]
    for item in determinism["evidence"]:
        lines.append(f"- {' vs '.join(item['runs'])}: " + ("identical" if item["identical"] else
                                                           f"differ: {item['differences']}"))
    checks = report["checks"]
    lines += ["", "## Checks", "", f"- seeds: {checks['seeds']}",
              f"- training data (every run): {checks['train_dataset']}",
              f"- evaluation set (every run): {checks['eval_dataset']}",
              f"- reward functions (first run): {checks['reward_funcs']}"]
    lines += [f"- WARNING: {warning}" for warning in checks["warnings"]]
    lines += ["", "## Runs", "", "| variant | seed | status | steps | wall time (s) | median step time (s) | "
              "peak GPU memory (MiB) | process peak RSS (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for name, variant in report["variants"].items():
        for seed, run in variant["seeds"].items():
            facts = run["facts"]
            lines.append(f"| {name} | {seed} | {run['status']} | {facts['global_steps']} | "
                         f"{_number(facts['wall_time_s'])} | {_number(facts['step_time_s']['median'])} | "
                         f"{_number(facts['peak_gpu_memory_mib'])} | {_number(facts['process_peak_rss_mib'])} |")
    environment = report["environment"]
    packages = ", ".join(f"{name} {version}" for name, version in environment["packages"].items() if version)
    gpus = ", ".join(f"{gpu['name']} ({gpu['memory_gib']} GiB)" for gpu in environment["gpus"]) or "none"
    git = environment["git"]
    lines += ["", "## Environment", "", f"- packages: {packages}",
              f"- Python {environment['python']}, {environment['platform']}, {environment['cpu_count']} CPUs",
              f"- GPUs: {gpus}" + (f" (CUDA {environment['cuda']})" if environment["cuda"] else ""),
              f"- git commit of the project (current folder): {git['project'] or 'not a git checkout'}",
              f"- git commit of grpo-custom: {git['grpo_custom'] or 'not a git checkout'}",
              f"- date: {report['created']}", ""]
    if report["plots"]:
        lines += ["## Plots", ""] + [f"![{metric}]({path})" for metric, path in report["plots"].items()] + [""]
    return "\n".join(lines)
