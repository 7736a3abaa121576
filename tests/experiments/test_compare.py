"""grpo_custom.compare on the offline length task (tiny model, CPU, 2 steps per run): identical variants give
identical curves and the report says the runs were deterministic; the report's numbers follow from the curves;
finished runs are reused, crashed/killed/half-written ones are redone; runs that break the comparison are refused."""
from __future__ import annotations

import json
import math
import re

import pytest

import grpo_custom
from grpo_custom.experiments import ExperimentError, Variant
from grpo_custom.experiments.checks import TIMING_METRIC
from grpo_custom.experiments.curves import run_value
from grpo_custom.experiments.examples import length_task_trainer

SHORT = {"max_steps": 2, "eval_steps": 2}
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    output = tmp_path_factory.mktemp("compare")
    variants = {"grpo": {"overrides": dict(SHORT), "note": "baseline"},
                "grpo_again": Variant(dict(SHORT), "the same configuration: must give the same curves"),
                "rloo": {"overrides": {**SHORT, "advantage_estimator": "rloo"}, "note": "leave-one-out baseline"}}
    report = grpo_custom.compare(length_task_trainer, variants, SEEDS, output, metrics=["reward", "eval_reward", "loss"],
                                 progress=False)
    return report, output


def _non_timing(curves: dict) -> dict:
    return {name: values for name, values in curves.items() if not TIMING_METRIC.search(name)}


def test_identical_variants_give_identical_curves_and_the_report_says_deterministic(experiment):
    report, _ = experiment
    runs = report["variants"]
    for seed in ("0", "1"):
        same, again = runs["grpo"]["seeds"][seed]["curves"], runs["grpo_again"]["seeds"][seed]["curves"]
        assert len(_non_timing(same)) > 20 and _non_timing(same) == _non_timing(again)
        # the comparison can tell configurations apart: rloo's loss differs on the same seed and data
        assert runs["rloo"]["seeds"][seed]["curves"]["loss"] != same["loss"]
    assert runs["grpo"]["seeds"]["0"]["curves"]["completions/mean_length"] != \
        runs["grpo"]["seeds"]["1"]["curves"]["completions/mean_length"]  # the seed drives sampling
    determinism = report["determinism"]
    assert determinism["deterministic"] is True
    kinds = sorted(item["kind"] for item in determinism["evidence"])
    assert kinds == ["identical variants", "identical variants", "rerun"]
    assert all(item["identical"] for item in determinism["evidence"])


def test_report_json_has_the_issue_structure(experiment):
    report, output = experiment
    assert json.loads((output / "report.json").read_text()) == report
    assert report["first_variant"] == "grpo" and report["seeds"] == SEEDS
    variant = report["variants"]["rloo"]
    assert variant["overrides"] == {**SHORT, "advantage_estimator": "rloo"} and variant["note"] == "leave-one-out baseline"
    run = variant["seeds"]["1"]
    assert run["steps"] == {"train": [1, 2], "eval": [2]}
    assert len(run["curves"]["reward"]) == 2 and len(run["curves"]["eval_reward"]) == 1
    facts = run["facts"]
    assert facts["global_steps"] == 2 and facts["wall_time_s"] > 0 and facts["step_time_s"]["first"] > 0
    assert facts["peak_gpu_memory_mib"] is None and facts["process_peak_rss_mib"] > 100  # CPU: no GPU number
    assert set(variant["summary"]) == {"reward", "eval_reward", "loss"}
    assert report["variants"]["grpo"]["difference_to_first"] is None
    assert variant["config_diff_to_first"]["overrides"] == {"advantage_estimator": ["(not set)", "rloo"]}
    assert variant["config_diff_to_first"]["config"] == {"advantage_estimator": ["grpo", "rloo"]}
    assert report["checks"]["train_dataset"]["rows"] == 64 and report["checks"]["eval_dataset"]["rows"] == 4
    assert report["checks"]["warnings"] == []
    assert report["environment"]["packages"]["trl"] and report["environment"]["gpus"] == []


def test_summaries_and_differences_follow_from_the_curves(experiment):
    report, _ = experiment
    for metric in ("reward", "eval_reward", "loss"):
        base = {seed: run_value(run["curves"][metric]) for seed, run in report["variants"]["grpo"]["seeds"].items()}
        mine = {seed: run_value(run["curves"][metric]) for seed, run in report["variants"]["rloo"]["seeds"].items()}
        summary = report["variants"]["rloo"]["summary"][metric]
        mean = (mine["0"] + mine["1"]) / 2
        half = 12.7062 * abs(mine["0"] - mine["1"]) / math.sqrt(2) / math.sqrt(2)  # t_{0.975,1} s / sqrt(n), n = 2
        assert summary["mean"] == pytest.approx(mean) and summary["values"] == mine
        assert summary["ci95"] == pytest.approx([mean - half, mean + half], abs=1e-3)
        difference = report["variants"]["rloo"]["difference_to_first"][metric]
        per_seed = [mine[seed] - base[seed] for seed in ("0", "1")]
        assert difference["pairing"] == "paired by seed"
        assert difference["mean"] == pytest.approx(sum(per_seed) / 2)
        half = 12.7062 * abs(per_seed[0] - per_seed[1]) / 2
        assert difference["ci95"] == pytest.approx([difference["mean"] - half, difference["mean"] + half], abs=1e-3)


def test_report_md_and_plots(experiment):
    _, output = experiment
    text = (output / "report.md").read_text()
    for expected in ("| metric | variant | seeds | mean | 95% CI | Δ vs first | 95% CI of Δ | pairing |",
                     "| `reward` | rloo | 2 |", "`advantage_estimator`: `grpo` → `rloo`", "Note: leave-one-out baseline",
                     "Deterministic: **yes**", "trl 1.15", "## Environment", "- date: ", "![eval_reward](plots/eval_reward.png)"):
        assert expected in text, expected
    for name in ("reward.png", "eval_reward.png", "loss.png"):
        assert (output / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _counting(calls: list, crash_variant: str | None = None):
    """length_task_trainer that records each call; ``crash_variant``'s run raises in its first step."""
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("simulated crash in step 1")

    def make_trainer(overrides, seed, output_dir):
        calls.append((overrides.get("learning_rate"), seed))
        trainer = length_task_trainer(overrides, seed, output_dir)
        if crash_variant is not None and overrides.get("learning_rate") == 0.01:
            trainer.add_callback(Crash())
        return trainer

    return make_trainer


def test_finished_runs_are_reused_and_crashed_killed_or_half_written_ones_redone(tmp_path, capsys):
    variants = {"a": {"max_steps": 2, "eval_strategy": "no"},
                "b": {"max_steps": 2, "eval_strategy": "no", "learning_rate": 0.01}}
    options = dict(check_determinism=False, plots=False, progress=False, metrics=["reward"])
    calls = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        grpo_custom.compare(_counting(calls, crash_variant="b"), variants, [0], tmp_path, **options)
    assert calls == [(None, 0), (0.01, 0)]
    a_result, b_folder = tmp_path / "runs/a/seed_0/result.json", tmp_path / "runs/b/seed_0"
    assert a_result.exists() and b_folder.exists() and not (b_folder / "result.json").exists()
    finished_a = a_result.read_text()

    calls.clear()  # the crashed run is redone, the finished one is not
    report = grpo_custom.compare(_counting(calls), variants, [0], tmp_path, **options)
    assert calls == [(0.01, 0)]
    assert {name: v["seeds"]["0"]["status"] for name, v in report["variants"].items()} == {"a": "reused", "b": "trained"}
    assert a_result.read_text() == finished_a

    # a killed run: a folder with leftovers and a half-written temporary file, no result.json; and a result cut short
    (b_folder / "result.json").unlink()
    (b_folder / ".result.json.x.tmp").write_text('{"format": 1, "finis')
    a_result.write_text(finished_a[: len(finished_a) // 2])
    calls.clear()
    report = grpo_custom.compare(_counting(calls), variants, [0], tmp_path, **options)
    assert sorted(calls, key=str) == [(0.01, 0), (None, 0)]
    assert not (b_folder / ".result.json.x.tmp").exists()
    redone = report["variants"]["a"]["seeds"]["0"]["curves"]
    assert _non_timing(redone) == _non_timing(json.loads(finished_a)["curves"])  # the redo trained the same run

    calls.clear()  # all finished now; a changed variant is trained again under its name
    variants["b"]["learning_rate"] = 0.02
    capsys.readouterr()
    report = grpo_custom.compare(_counting(calls), variants, [0], tmp_path, **{**options, "progress": True})
    assert calls == [(0.02, 0)] and report["variants"]["a"]["seeds"]["0"]["status"] == "reused"
    assert re.search(r"runs: 100%.*\| 2/2 ", capsys.readouterr().err)  # the progress bar over the runs


def test_a_trainer_ignoring_its_seed_or_another_eval_set_is_refused_before_training(tmp_path):
    trained = []

    def ignores_seed(overrides, seed, output_dir):
        trainer = length_task_trainer(overrides, 0, output_dir)
        trainer.train = lambda *a, **k: trained.append(seed)
        return trainer

    with pytest.raises(ExperimentError, match=r"variant 'a', seed 3: make_trainer built a trainer with args.seed=0"):
        grpo_custom.compare(ignores_seed, {"a": {}}, [3], tmp_path / "seed", progress=False)
    assert trained == []

    from grpo_custom.testing import length_dataset

    def other_eval_set(overrides, seed, output_dir):
        trainer = length_task_trainer({k: v for k, v in overrides.items() if k != "eval_prompts"}, seed, output_dir)
        if overrides.get("eval_prompts"):
            trainer.eval_dataset = length_dataset(overrides["eval_prompts"], seed=1)
        return trainer

    variants = {"a": {"max_steps": 1, "eval_strategy": "no"}, "b": {"max_steps": 1, "eval_strategy": "no",
                                                                   "eval_prompts": 5}}
    with pytest.raises(ExperimentError, match=r"variant 'b', seed 0 has another evaluation set than variant 'a', "
                                              r"seed 0: \{'rows': 5, 'sha256'"):
        grpo_custom.compare(other_eval_set, variants, [0], tmp_path / "eval", progress=False, plots=False,
                            check_determinism=False)
    assert not (tmp_path / "eval/runs/b/seed_0/result.json").exists()


def test_bad_arguments_are_named():
    with pytest.raises(ExperimentError, match=r"variant 'a': overrides set \['seed'\]"):
        grpo_custom.compare(length_task_trainer, {"a": {"seed": 1}}, [0], "unused")
    with pytest.raises(ExperimentError, match="seeds repeat a value"):
        grpo_custom.compare(length_task_trainer, {"a": {}}, [0, 0], "unused")
    with pytest.raises(ExperimentError, match="variant name 'a b'"):
        grpo_custom.compare(length_task_trainer, {"a b": {}}, [0], "unused")
