"""PNG plots of an experiment: per metric, each variant's mean curve across seeds with its 95% interval band."""
from __future__ import annotations

import re
from pathlib import Path

from grpo_custom.experiments.curves import kind_of
from grpo_custom.experiments.stats import mean_interval


def band(runs: list[tuple[list[int], list]]) -> tuple[list[int], list[float], list, list]:
    """``(steps, means, lows, highs)`` across runs given as ``(steps, values)``: at each step that every run logged
    a value, the mean and its Student-t 95% interval (lows/highs None with one run)."""
    common = None
    for steps, values in runs:
        logged = {step for step, value in zip(steps, values) if value is not None}
        common = logged if common is None else common & logged
    xs, means, lows, highs = [], [], [], []
    for step in sorted(common or ()):
        samples = [value for steps, values in runs for s, value in zip(steps, values) if s == step]
        interval = mean_interval(samples)
        xs.append(step)
        means.append(interval.mean)
        lows.append(interval.low)
        highs.append(interval.high)
    return xs, means, lows, highs


def plot_file_name(metric: str) -> str:
    """A file name for ``metric``'s plot (``rewards/length_reward/mean`` -> ``rewards__length_reward__mean.png``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", metric.replace("/", "__")) + ".png"


def plot_metrics(results: dict, metrics: list[str], folder: str | Path) -> dict[str, str]:
    """One PNG per metric in ``folder``; ``results`` is ``{variant: {seed (str): run result}}``.

    Returns ``{metric: file path}``. With one seed a variant's line has no band (the legend says so).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for metric in metrics:
        figure, axis = plt.subplots(figsize=(6.4, 3.8))
        drawn = False
        for variant, seeds in results.items():
            runs = [(result["steps"][kind_of(metric)], result["curves"][metric])
                    for result in seeds.values() if metric in result["curves"]]
            if not runs:
                continue
            xs, means, lows, highs = band(runs)
            label = f"{variant} ({len(runs)} seed{'s' if len(runs) > 1 else ''}" + (
                ", mean and 95% CI)" if len(runs) > 1 else ": no interval)")
            (line,) = axis.plot(xs, means, marker=".", label=label)
            if len(runs) > 1 and xs:
                axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
            drawn = True
        if drawn:
            axis.set_xlabel("step")
            axis.set_ylabel(metric)
            axis.set_title(metric)
            axis.grid(alpha=0.3)
            axis.legend(fontsize="small")
            figure.tight_layout()
            path = folder / plot_file_name(metric)
            figure.savefig(path, dpi=100)
            written[metric] = str(path)
        plt.close(figure)
    return written
