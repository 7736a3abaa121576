"""The comparison's guarantees, checked on the runs themselves: the same training data (so the same data order for
a seed), the same evaluation set and the same reward functions across variants, and whether training was
deterministic (identical curves for identical configurations on the same seed)."""
from __future__ import annotations

import re

from grpo_custom.experiments.variants import ExperimentError

# Logged values that measure wall-clock time: they differ between identical runs and say nothing on determinism.
TIMING_METRIC = re.compile(r"(runtime|per_second|step_time)")


class ComparabilityCheck:
    """Holds the first run's training/evaluation data fingerprints and reward functions; :meth:`check` refuses a
    run with other data (before it trains) and records other reward functions as a warning."""

    def __init__(self):
        self.reference: dict | None = None
        self.reference_run = ""
        self.warnings: list[str] = []

    def check(self, facts: dict, where: str) -> None:
        """Compare one run's trainer facts (``fingerprints.trainer_facts``) with the first run's.

        Raises:
            ExperimentError: its training or evaluation data differ from the first run's (rows and sha256 of both).
        """
        if self.reference is None:
            self.reference, self.reference_run = facts, where
            return
        for key, what in (("train_dataset", "training data"), ("eval_dataset", "evaluation set")):
            if facts[key] != self.reference[key]:
                raise ExperimentError(
                    f"{where} has another {what} than {self.reference_run}: {facts[key]} vs {self.reference[key]} "
                    f"(rows, sha256 of the rows in order). Every variant must run on the same {what} for the "
                    "comparison to mean anything: build it the same way in make_trainer for every variant")
        if facts["reward_funcs"] != self.reference["reward_funcs"]:
            warning = (f"{where} is scored by reward functions {facts['reward_funcs']}, {self.reference_run} by "
                       f"{self.reference['reward_funcs']}: 'reward' and 'eval_reward' are not the same criterion")
            if warning not in self.warnings:
                self.warnings.append(warning)

    def summary(self) -> dict:
        """What was checked, for the report."""
        reference = self.reference or {}
        return {
            "seeds": "every run's args.seed equals its seed (data_seed equal or unset) and args.output_dir its folder",
            "train_dataset": reference.get("train_dataset"),
            "eval_dataset": reference.get("eval_dataset"),
            "reward_funcs": reference.get("reward_funcs"),
            "same_data_in_every_run": self.reference is not None,
            "warnings": list(self.warnings),
        }


def curve_differences(first: dict, second: dict) -> dict[str, float | str]:
    """``{metric: max |difference|}`` over the non-timing curves of two runs where they differ (``"missing"`` or
    ``"length"`` when one run lacks the metric or logged it a different number of times); {} when identical."""
    differences = {}
    for name in sorted(set(first) | set(second)):
        if TIMING_METRIC.search(name):
            continue
        a, b = first.get(name), second.get(name)
        if a is None or b is None:
            differences[name] = "missing"
        elif len(a) != len(b):
            differences[name] = "length"
        elif a != b:
            gaps = [abs(x - y) for x, y in zip(a, b) if x is not None and y is not None]
            differences[name] = max(gaps) if gaps else "missing"
    return differences


def determinism_evidence(results: dict, keys: dict[str, str], rerun: tuple[str, int, dict] | None) -> dict:
    """Whether training was deterministic, from the evidence at hand.

    Args:
        results: ``{variant: {seed (str): run result}}``.
        keys: ``{variant: overrides key}`` (variants with equal keys are identical configurations).
        rerun: ``(variant, seed, result)`` of a second run of one configuration, or None.

    Returns:
        ``{"deterministic": True/False/None, "evidence": [{"runs", "identical", "differences"}, ...], "method"}``;
        None when no two runs share a configuration and seed (nothing to compare).
    """
    evidence = []
    names = list(results)
    for index, name in enumerate(names):
        for other in names[index + 1:]:
            if keys[name] != keys[other]:
                continue
            for seed in sorted(set(results[name]) & set(results[other])):
                found = curve_differences(results[name][seed]["curves"], results[other][seed]["curves"])
                evidence.append({"runs": [f"{name} seed {seed}", f"{other} seed {seed}"], "kind": "identical variants",
                                 "identical": not found, "differences": found})
    if rerun is not None:
        name, seed, result = rerun
        found = curve_differences(results[name][str(seed)]["curves"], result["curves"])
        evidence.append({"runs": [f"{name} seed {seed}", f"{name} seed {seed} (rerun)"], "kind": "rerun",
                         "identical": not found, "differences": found})
    method = ("the logged curves (timing metrics left out) of runs with the same configuration and seed compared "
              "value by value: " + ("; ".join(" vs ".join(item["runs"]) for item in evidence) or "none available"))
    verdict = None if not evidence else all(item["identical"] for item in evidence)
    return {"deterministic": verdict, "method": method, "evidence": evidence}
