"""The YAML front end: files are validated key by key (typos, missing keys, wrong types, duplicates named), the
docs' example files load, a declarative space draws what it says, and ``grpo-custom compare|search FILE`` run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest

from grpo_custom.cli.main import main
from grpo_custom.experiments.config_file import ExperimentConfigError, load_compare_file, load_search_file
from grpo_custom.experiments.examples import length_task_trainer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "experiments.md"
MAKE = "make_trainer: grpo_custom.experiments.examples:length_task_trainer\n"


def _write(folder: Path, text: str, name: str = "experiment.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_a_valid_compare_file_resolves_everything(tmp_path):
    (tmp_path / "best.yaml").write_text("note: from a search\noverrides: {learning_rate: 0.01}\n")
    path = _write(tmp_path, MAKE + "output_dir: out\nseeds: [0, 1]\nmetrics: [reward]\ncheck_determinism: false\n"
                  "variants:\n  base:\n  rloo: {overrides: {advantage_estimator: rloo}, note: why}\n"
                  "  tuned: {file: best.yaml}\n")
    experiment = load_compare_file(path)
    assert experiment.make_trainer is length_task_trainer
    assert experiment.output_dir == tmp_path / "out" and experiment.seeds == [0, 1]
    assert {name: (v.overrides, v.note) for name, v in experiment.variants.items()} == {
        "base": ({}, ""), "rloo": ({"advantage_estimator": "rloo"}, "why"),
        "tuned": ({"learning_rate": 0.01}, "from a search")}
    assert experiment.options == {"metrics": ["reward"], "check_determinism": False}


@pytest.mark.parametrize("body, message", [
    ("output_dir: o\nseed: [0]\nvariants: {a: {}}\n", r"seed: unknown key \(did you mean 'seeds'\?\)"),
    ("output_dir: o\nvariants: {a: {}}\n", r"seeds: missing \(required\)"),
    ("output_dir: o\nseeds: [0, '1']\nvariants: {a: {}}\n", r"seeds\[1\]: expected an int, got str '1'"),
    ("output_dir: o\nseeds: [0]\nvariants: {rloo: {overides: {beta: 0.1}}}\n",
     r"variants\.rloo\.overides: unknown key \(did you mean 'overrides'\?\)"),
    ("output_dir: o\nseeds: [0]\nvariants: {a: {overrides: [1]}}\n", r"variants\.a\.overrides: expected a mapping"),
    ("output_dir: o\nseeds: [0]\nvariants: {a: {file: missing.yaml}}\n", r"variants\.a\.file: .*missing.yaml: no such"),
    ("output_dir: o\nseeds: [0]\nseeds: [1]\nvariants: {a: {}}\n", r"not valid YAML: duplicate key 'seeds'"),
    ("output_dir: o\nseeds: [0]\nvariants: {}\n", r"variants: needs at least one variant"),
    ("output_dir: o\nseeds: [0]\nsummary_fraction: 2\nvariants: {a: {}}\n", r"summary_fraction: must be in \(0, 1\]"),
])
def test_bad_compare_files_name_the_key(tmp_path, body, message):
    with pytest.raises(ExperimentConfigError, match=re.escape(str(tmp_path / "experiment.yaml")) + ": " + message):
        load_compare_file(_write(tmp_path, MAKE + body))


def test_make_trainer_errors_name_the_key(tmp_path):
    body = "output_dir: o\nseeds: [0]\nvariants: {a: {}}\n"
    with pytest.raises(ExperimentConfigError, match=r"make_trainer: cannot import 'no_such_module'"):
        load_compare_file(_write(tmp_path, "make_trainer: no_such_module:f\n" + body))
    with pytest.raises(ExperimentConfigError, match=r"make_trainer: 'grpo_custom.experiments.examples' has no function"):
        load_compare_file(_write(tmp_path, "make_trainer: grpo_custom.experiments.examples:nope\n" + body))
    (tmp_path / "my_runs.py").write_text("def build(overrides, seed, output_dir):\n    return 'built'\n")
    for reference in ("my_runs:build", "my_runs.py:build"):  # next to the YAML file: a module or a file
        assert load_compare_file(_write(tmp_path, f"make_trainer: {reference}\n" + body)).make_trainer({}, 0, "") == "built"


def test_search_file_space_draws_fixed_and_nested_values(tmp_path):
    path = _write(tmp_path, MAKE + "output_dir: s\nmetric: reward\ndirection: maximize\nn_trials: 3\npruner: none\n"
                  "fixed: {max_steps: 2}\nspace:\n  learning_rate: {type: float, low: 0.001, high: 0.1, log: true}\n"
                  "  advantage_estimator: {type: categorical, choices: [grpo, rloo]}\n"
                  "  policy_loss_kwargs.clip_ratio_c: {type: float, low: 2.0, high: 5.0}\n")
    experiment = load_search_file(path)
    assert experiment.options["n_trials"] == 3 and isinstance(experiment.options["pruner"], optuna.pruners.NopPruner)
    trial = optuna.trial.FixedTrial({"learning_rate": 0.01, "advantage_estimator": "rloo",
                                     "policy_loss_kwargs.clip_ratio_c": 3.0})
    assert experiment.space(trial) == {"max_steps": 2, "learning_rate": 0.01, "advantage_estimator": "rloo",
                                       "policy_loss_kwargs": {"clip_ratio_c": 3.0}}
    with pytest.raises(ExperimentConfigError, match=r"direction: expected 'maximize' or 'minimize', got 'max'"):
        load_search_file(_write(tmp_path, path.read_text().replace("direction: maximize", "direction: max")))


@pytest.mark.parametrize("space, message", [
    ("  learning_rate: {type: float, low: 0.1, high: 0.01}", r"space\.learning_rate: low 0.1 is above high 0.01"),
    ("  learning_rate: {type: float, low: 0.001, high: 0.1, logg: true}",
     r"space\.learning_rate\.logg: unknown key \(did you mean 'log'\?\)"),
    ("  learning_rate: {type: real, low: 0, high: 1}", r"space\.learning_rate\.type: expected one of"),
    ("  num_iterations: {type: int, low: 1.5, high: 3}", r"space\.num_iterations\.low: expected an int"),
    ("  advantage_estimator: {type: categorical}", r"space\.advantage_estimator\.choices: missing \(required\)"),
])
def test_bad_search_spaces_name_the_key(tmp_path, space, message):
    body = MAKE + "output_dir: s\nmetric: reward\ndirection: maximize\nn_trials: 3\nspace:\n" + space + "\n"
    with pytest.raises(ExperimentConfigError, match=message):
        load_search_file(_write(tmp_path, body))


def test_the_yaml_files_of_the_docs_load(tmp_path):
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert len(blocks) == 2
    search = load_search_file(_write(tmp_path, blocks[0], "search.yaml"))
    assert search.options["metric"] == "eval_reward" and search.options["study_name"] == "lr-and-estimator"
    best = tmp_path / "experiments/cli_search/best_variant.yaml"
    best.parent.mkdir(parents=True)
    best.write_text("note: best\noverrides: {learning_rate: 0.003}\n")
    compare = load_compare_file(_write(tmp_path, blocks[1], "compare.yaml"))
    assert compare.variants["tuned"].overrides == {"learning_rate": 0.003} and compare.seeds == [0, 1, 2, 3, 4]


def test_cli_runs_a_search_then_compares_its_best_trial(tmp_path, capsys):
    _write(tmp_path, MAKE + "output_dir: search\nmetric: reward\ndirection: maximize\nn_trials: 2\n"
           "fixed: {max_steps: 2, eval_strategy: 'no'}\n"
           "space: {learning_rate: {type: float, low: 0.001, high: 0.1, log: true}}\n", "search.yaml")
    assert main(["search", str(tmp_path / "search.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "trials: 2 complete, 0 pruned, 0 failed" in printed and "best variant:" in printed
    _write(tmp_path, MAKE + "output_dir: compare\nseeds: [0]\nplots: false\ncheck_determinism: false\n"
           "variants:\n  base: {overrides: {max_steps: 2, eval_strategy: 'no'}}\n"
           "  tuned: {file: search/best_variant.yaml}\n", "compare.yaml")
    assert main(["compare", str(tmp_path / "compare.yaml")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^reward +tuned +mean -?[0-9.]+ +Δ vs base [-+][0-9.e-]+ \(interval undefined: one seed\)$",
                     printed, re.MULTILINE), printed
    report = json.loads((tmp_path / "compare/report.json").read_text())
    best = json.loads((tmp_path / "search/trials").joinpath(
        f"trial_{_best_trial(tmp_path / 'search')}/result.json").read_text())
    assert report["variants"]["tuned"]["overrides"] == best["overrides"]  # the searched overrides, run again
    assert report["variants"]["tuned"]["seeds"]["0"]["curves"]["loss"] == best["curves"]["loss"]  # same seed: same run


def _best_trial(folder: Path) -> int:
    study = optuna.load_study(study_name="grpo_custom_search", storage=f"sqlite:///{folder / 'study.db'}")
    return study.best_trial.number


def test_cli_bad_file_is_one_line_naming_the_key_and_exit_status_2(tmp_path, capsys):
    path = _write(tmp_path, MAKE + "output_dir: o\nseeds: [0]\nvariants: {a: {note: 1}}\n")
    assert main(["compare", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("grpo-custom compare: error: ") and "variants.a.note: expected a string, got int 1" in error
    assert error.count("\n") == 1
