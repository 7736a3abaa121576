"""Variants of an experiment: a name, the config overrides it applies and a note (its purpose and expected effect).

A variant is given as a :class:`Variant`, as ``{"overrides": {...}, "note": "..."}``, or as a plain overrides dict.
:func:`load_variant` reads the file ``search`` writes for its best trial (``best_variant.yaml``).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESERVED_OVERRIDES = ("seed", "data_seed", "output_dir")
_VARIANT_KEYS = {"overrides", "note"}


class ExperimentError(ValueError):
    """A mistake in an experiment's input or a broken comparison guarantee, named precisely (variant, seed, key)."""


class ExperimentConfigError(ExperimentError):
    """A bad experiment file: the message names the file and the key."""


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: ``overrides`` (GRPOConfig fields for ``make_trainer``) and a free-text ``note``."""

    overrides: dict = field(default_factory=dict)
    note: str = ""


def plain(value: Any) -> Any:
    """A JSON-ready form of ``value``: containers recursively, callables by qualified name, other objects by
    ``repr`` without memory addresses, non-finite floats as strings ("nan", "inf")."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def overrides_key(overrides: dict) -> str:
    """A stable hash of ``overrides`` (through :func:`plain`): a finished run is reused only for the same key."""
    text = json.dumps(plain(overrides), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def normalize_variants(variants: dict) -> dict[str, Variant]:
    """``{name: Variant}`` from what users pass (see the module docstring), checked.

    Raises:
        ExperimentError: no variants; a name that is not a non-empty string or is unsafe as a folder name;
            overrides that are not a dict or set seed/data_seed/output_dir; a note that is not a string.
    """
    if not isinstance(variants, dict) or not variants:
        raise ExperimentError(f"variants must be a non-empty dict {{name: overrides}}, got {variants!r}")
    result = {}
    for name, spec in variants.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
            raise ExperimentError(f"variant name {name!r}: use letters, digits and _ . + - (it names a folder)")
        if isinstance(spec, Variant):
            variant = spec
        elif isinstance(spec, dict) and "overrides" in spec and set(spec) <= _VARIANT_KEYS:
            variant = Variant(spec["overrides"], spec.get("note", "") or "")
        elif isinstance(spec, dict):
            variant = Variant(dict(spec))
        else:
            raise ExperimentError(f"variant {name!r}: expected a dict of overrides or a Variant, got {type(spec).__name__}")
        if not isinstance(variant.overrides, dict):
            raise ExperimentError(f"variant {name!r}: overrides must be a dict, got {type(variant.overrides).__name__}")
        if not isinstance(variant.note, str):
            raise ExperimentError(f"variant {name!r}: note must be a string, got {type(variant.note).__name__}")
        reserved = sorted(set(variant.overrides) & set(RESERVED_OVERRIDES))
        if reserved:
            raise ExperimentError(f"variant {name!r}: overrides set {reserved}; the experiment sets seed, data_seed "
                                  "and output_dir of every run itself")
        result[name] = variant
    return result


def load_variant(path: str | Path) -> Variant:
    """The variant stored in a YAML or JSON file with the keys ``overrides`` (a mapping) and ``note`` (optional),
    such as the ``best_variant.yaml`` that :func:`grpo_custom.search` writes.

    Raises:
        ExperimentError: the file is missing or unreadable, or has another shape (naming the file and the key).
    """
    from grpo_custom.experiments.yaml_loading import load_yaml_file

    path = Path(path)
    data = load_yaml_file(path)
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: expected a mapping with 'overrides' (and 'note'), got {type(data).__name__}")
    unknown = sorted(set(data) - _VARIANT_KEYS)
    if unknown or "overrides" not in data:
        raise ExperimentError(f"{path}: a variant file has the keys 'overrides' and 'note'; "
                              + (f"unknown key(s) {unknown}" if unknown else "'overrides' is missing"))
    if not isinstance(data["overrides"], dict):
        raise ExperimentError(f"{path}: 'overrides' must be a mapping, got {type(data['overrides']).__name__}")
    note = data.get("note") or ""
    if not isinstance(note, str):
        raise ExperimentError(f"{path}: 'note' must be a string, got {type(note).__name__}")
    return Variant(dict(data["overrides"]), note)
