"""The YAML front end of ``grpo-custom compare FILE`` and ``grpo-custom search FILE``: read, validate, resolve.

Every key is checked: an unknown key (a typo) is an error naming it and the nearest valid key, a missing one
names what is required, a wrong type names the key path (``variants.rloo.overrides``). Relative paths
(``output_dir``, a variant's ``file``, a ``path/to/file.py:function``) are relative to the YAML file's folder, and
that folder is put on ``sys.path`` so ``module:function`` finds a module next to the file. The file formats are in
``docs/experiments.md``.
"""
from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from grpo_custom.experiments.variants import ExperimentConfigError, ExperimentError, Variant, load_variant

COMPARE_KEYS = {"make_trainer": True, "variants": True, "seeds": True, "output_dir": True, "metrics": False,
                "summary_fraction": False, "check_determinism": False, "plots": False}
SEARCH_KEYS = {"make_trainer": True, "space": True, "n_trials": True, "metric": True, "direction": True,
               "output_dir": True, "seed": False, "study_name": False, "fixed": False, "pruner": False,
               "summary_fraction": False}
VARIANT_KEYS = ("overrides", "note", "file")
PARAMETER_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
                  "categorical": {"type", "choices"}}
PRUNERS = ("median", "none")


def _fail(path: Path, key: str, problem: str):
    raise ExperimentConfigError(f"{path}: {key}: {problem}")


def _check_keys(path: Path, where: str, data, allowed, required=()) -> None:
    """Every key of the mapping ``data`` (at ``where``) is in ``allowed``; every ``required`` one is present."""
    if not isinstance(data, dict):
        _fail(path, where or "(top level)", f"expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            _fail(path, f"{where}.{key}" if where else str(key), f"unknown key{hint}; valid keys: {sorted(allowed)}")
    for key in required:
        if key not in data:
            _fail(path, f"{where}.{key}" if where else key, "missing (required)")


def _typed(path: Path, key: str, value, types: tuple, what: str):
    if isinstance(value, bool) and bool not in types:
        _fail(path, key, f"expected {what}, got {value!r}")
    if not isinstance(value, types):
        _fail(path, key, f"expected {what}, got {type(value).__name__} {value!r}")
    return value


def resolve_callable(path: Path, key: str, reference: str) -> Callable:
    """The function named ``reference`` (``package.module:function`` or ``path/to/file.py:function``)."""
    _typed(path, key, reference, (str,), "'module:function' or 'path/to/file.py:function'")
    module_name, _, function_name = reference.rpartition(":")
    if not module_name or not function_name:
        _fail(path, key, f"{reference!r} is not 'module:function' or 'path/to/file.py:function'")
    folder = str(path.parent.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        if module_name.endswith(".py"):
            from grpo_custom.utils.module_loading import exec_module_from_file

            file = (path.parent / module_name).resolve()
            if not file.is_file():
                _fail(path, key, f"no such file {str(file)!r}")
            module = exec_module_from_file(f"grpo_custom_experiment_{file.stem}", str(file))
        else:
            module = importlib.import_module(module_name)
    except ImportError as error:
        _fail(path, key, f"cannot import {module_name!r}: {error}")
    function = getattr(module, function_name, None)
    if not callable(function):
        _fail(path, key, f"{module_name!r} has no function {function_name!r}")
    return function


def _fraction(path: Path, data: dict):
    if "summary_fraction" not in data:
        return {}
    value = _typed(path, "summary_fraction", data["summary_fraction"], (int, float), "a number in (0, 1]")
    if not 0 < value <= 1:
        _fail(path, "summary_fraction", f"must be in (0, 1], got {value}")
    return {"summary_fraction": float(value)}


def _output_dir(path: Path, data: dict) -> Path:
    return path.parent / _typed(path, "output_dir", data["output_dir"], (str,), "a folder path")


def _variant(path: Path, name: str, spec) -> Variant:
    where = f"variants.{name}"
    if spec is None:
        return Variant({})
    _check_keys(path, where, spec, VARIANT_KEYS)
    note = spec.get("note")
    if note is not None:
        _typed(path, f"{where}.note", note, (str,), "a string")
    if "file" in spec:
        if "overrides" in spec:
            _fail(path, where, "give either 'file' or 'overrides', not both")
        file = path.parent / _typed(path, f"{where}.file", spec["file"], (str,), "a file path")
        try:
            variant = load_variant(file)
        except ExperimentError as error:
            _fail(path, f"{where}.file", str(error))
        return Variant(variant.overrides, note if note is not None else variant.note)
    overrides = spec.get("overrides", {}) or {}
    _typed(path, f"{where}.overrides", overrides, (dict,), "a mapping of GRPOConfig fields")
    return Variant(dict(overrides), note or "")


@dataclass
class CompareFile:
    """A validated compare file: the arguments of :func:`grpo_custom.compare`."""

    make_trainer: Callable
    variants: dict[str, Variant]
    seeds: list[int]
    output_dir: Path
    options: dict = field(default_factory=dict)


def load_compare_file(path: str | Path) -> CompareFile:
    """Read and validate a compare file (see the module docstring).

    Raises:
        ExperimentConfigError: naming the file and the key of the first problem.
    """
    from grpo_custom.experiments.yaml_loading import load_yaml_file

    path = Path(path)
    data = load_yaml_file(path)
    _check_keys(path, "", data, COMPARE_KEYS, [key for key, required in COMPARE_KEYS.items() if required])
    variants = _typed(path, "variants", data["variants"], (dict,), "a mapping {name: {overrides, note}}")
    if not variants:
        _fail(path, "variants", "needs at least one variant")
    seeds = data["seeds"]
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    _typed(path, "seeds", seeds, (list,), "a list of ints")
    for index, seed in enumerate(seeds):
        _typed(path, f"seeds[{index}]", seed, (int,), "an int")
    if not seeds:
        _fail(path, "seeds", "needs at least one seed")
    options = _fraction(path, data)
    if "metrics" in data:
        metrics = _typed(path, "metrics", data["metrics"], (list,), "a list of metric names")
        for index, metric in enumerate(metrics):
            _typed(path, f"metrics[{index}]", metric, (str,), "a metric name")
        options["metrics"] = list(metrics)
    for key in ("check_determinism", "plots"):
        if key in data:
            options[key] = _typed(path, key, data[key], (bool,), "true or false")
    return CompareFile(
        make_trainer=resolve_callable(path, "make_trainer", data["make_trainer"]),
        variants={str(name): _variant(path, str(name), spec) for name, spec in variants.items()},
        seeds=list(seeds), output_dir=_output_dir(path, data), options=options)


def _parameter(path: Path, name: str, spec) -> dict:
    where = f"space.{name}"
    _typed(path, where, spec, (dict,), "a mapping with 'type' (float, int or categorical)")
    kind = spec.get("type")
    if kind not in PARAMETER_KEYS:
        _fail(path, f"{where}.type", f"expected one of {sorted(PARAMETER_KEYS)}, got {kind!r}")
    required = ("choices",) if kind == "categorical" else ("low", "high")
    _check_keys(path, where, spec, PARAMETER_KEYS[kind], required)
    if kind == "categorical":
        choices = _typed(path, f"{where}.choices", spec["choices"], (list,), "a non-empty list")
        if not choices:
            _fail(path, f"{where}.choices", "needs at least one choice")
        return dict(spec)
    number = (int,) if kind == "int" else (int, float)
    for key in ("low", "high", "step"):
        if key in spec:
            _typed(path, f"{where}.{key}", spec[key], number, f"a{'n int' if kind == 'int' else ' number'}")
    if spec["low"] > spec["high"]:
        _fail(path, where, f"low {spec['low']} is above high {spec['high']}")
    if "log" in spec:
        _typed(path, f"{where}.log", spec["log"], (bool,), "true or false")
    return dict(spec)


def _set_dotted(overrides: dict, dotted: str, value) -> None:
    """``overrides["a"]["b"] = value`` for ``dotted`` = ``"a.b"`` (an option's nested field, e.g. ``policy_loss_kwargs``)."""
    *parents, last = dotted.split(".")
    for part in parents:
        overrides = overrides.setdefault(part, {})
    overrides[last] = value


def declarative_space(parameters: dict, fixed: dict) -> Callable:
    """``space(trial)`` drawing each parameter of ``parameters`` (validated specs) with ``trial.suggest_*`` and adding
    the constant ``fixed`` overrides; a dotted name (``policy_loss_kwargs.clip_ratio_c``) sets a nested field."""
    import copy

    def space(trial) -> dict:
        overrides = copy.deepcopy(fixed)
        for name, spec in parameters.items():
            if spec["type"] == "categorical":
                value = trial.suggest_categorical(name, spec["choices"])
            else:
                suggest = trial.suggest_float if spec["type"] == "float" else trial.suggest_int
                options = {key: spec[key] for key in ("log", "step") if key in spec}
                value = suggest(name, spec["low"], spec["high"], **options)
            _set_dotted(overrides, name, value)
        return overrides

    return space


@dataclass
class SearchFile:
    """A validated search file: the arguments of :func:`grpo_custom.search`."""

    make_trainer: Callable
    space: Callable
    output_dir: Path
    options: dict = field(default_factory=dict)


def load_search_file(path: str | Path) -> SearchFile:
    """Read and validate a search file (see the module docstring).

    Raises:
        ExperimentConfigError: naming the file and the key of the first problem.
    """
    from grpo_custom.experiments.yaml_loading import load_yaml_file

    path = Path(path)
    data = load_yaml_file(path)
    _check_keys(path, "", data, SEARCH_KEYS, [key for key, required in SEARCH_KEYS.items() if required])
    fixed = _typed(path, "fixed", data.get("fixed", {}) or {}, (dict,), "a mapping of GRPOConfig fields")
    if isinstance(data["space"], str):
        if fixed:
            _fail(path, "fixed", "applies to a space given as a mapping; a space function sets every override itself")
        space = resolve_callable(path, "space", data["space"])
    else:
        parameters = _typed(path, "space", data["space"], (dict,), "a mapping {option: parameter} or 'module:function'")
        if not parameters:
            _fail(path, "space", "needs at least one parameter")
        space = declarative_space({str(name): _parameter(path, str(name), spec) for name, spec in parameters.items()},
                                  dict(fixed))
    n_trials = _typed(path, "n_trials", data["n_trials"], (int,), "a positive int")
    if n_trials < 1:
        _fail(path, "n_trials", f"must be at least 1, got {n_trials}")
    direction = data["direction"]
    if direction not in ("maximize", "minimize"):
        _fail(path, "direction", f"expected 'maximize' or 'minimize', got {direction!r}")
    options: dict[str, Any] = {"n_trials": n_trials, "direction": direction,
                               "metric": _typed(path, "metric", data["metric"], (str,), "a metric name"),
                               **_fraction(path, data)}
    if "seed" in data:
        options["seed"] = _typed(path, "seed", data["seed"], (int,), "an int")
    if "study_name" in data:
        options["study_name"] = _typed(path, "study_name", data["study_name"], (str,), "a name")
    pruner = data.get("pruner", "median")
    if pruner not in PRUNERS:
        _fail(path, "pruner", f"expected one of {list(PRUNERS)}, got {pruner!r}")
    if pruner == "none":
        import optuna

        options["pruner"] = optuna.pruners.NopPruner()
    return SearchFile(make_trainer=resolve_callable(path, "make_trainer", data["make_trainer"]), space=space,
                      output_dir=_output_dir(path, data), options=options)
