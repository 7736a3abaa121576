"""What a run's comparability rests on, read from the trainer ``make_trainer`` built: the seeds in its config, the
content of its training and evaluation data, its reward functions, and its full config (for the config diff).

Datasets are fingerprinted by content (sha256 over every row in order, as canonical JSON), not by the
``datasets`` library's ``_fingerprint``, which differs between two identical in-memory datasets.
"""
from __future__ import annotations

import hashlib
import json

from grpo_custom.experiments.variants import plain

# Config fields that differ between runs by construction (paths, names), left out of the config diff.
PER_RUN_FIELDS = {"output_dir", "logging_dir", "run_name", "hub_model_id", "seed", "data_seed"}


def dataset_fingerprint(dataset) -> dict | None:
    """``{"rows": n, "sha256": ...}`` over the rows of ``dataset`` in order (a ``datasets.Dataset``, a sequence
    with ``len`` and indexing, or a dict of those, fingerprinted per key); None for None.

    Raises:
        TypeError: a dataset without ``len`` (an iterable/streaming dataset cannot be checked by content).
    """
    if dataset is None:
        return None
    if isinstance(dataset, dict):
        return {str(name): dataset_fingerprint(part) for name, part in sorted(dataset.items())}
    if not hasattr(dataset, "__len__"):
        raise TypeError(f"cannot fingerprint a dataset of type {type(dataset).__name__} (it has no length)")
    digest = hashlib.sha256()
    if hasattr(dataset, "iter") and hasattr(dataset, "column_names"):  # datasets.Dataset: batched, fast
        for batch in dataset.iter(batch_size=1024):
            digest.update(json.dumps(plain(batch), sort_keys=True).encode())
    else:
        for index in range(len(dataset)):
            digest.update(json.dumps(plain(dataset[index]), sort_keys=True).encode())
    return {"rows": len(dataset), "sha256": digest.hexdigest()}


def trainer_facts(trainer) -> dict:
    """What the comparison checks across runs: ``seed``/``data_seed``/``output_dir`` of ``trainer.args``, the
    fingerprints of the train and eval datasets, the reward function names and the config (JSON-ready)."""
    args = trainer.args
    return {
        "seed": getattr(args, "seed", None),
        "data_seed": getattr(args, "data_seed", None),
        "output_dir": getattr(args, "output_dir", None),
        "train_dataset": dataset_fingerprint(getattr(trainer, "train_dataset", None)),
        "eval_dataset": dataset_fingerprint(getattr(trainer, "eval_dataset", None)),
        "reward_funcs": list(getattr(trainer, "reward_func_names", []) or []),
        "config": plain(args.to_dict()),
    }


def config_diff(config: dict, baseline: dict) -> dict:
    """``{field: [baseline value, value]}`` for every config field that differs (per-run fields left out); a field
    one side lacks shows as ``None`` there."""
    fields = (set(config) | set(baseline)) - PER_RUN_FIELDS
    return {name: [baseline.get(name), config.get(name)] for name in sorted(fields)
            if config.get(name) != baseline.get(name)}


def overrides_diff(overrides: dict, baseline: dict) -> dict:
    """``{key: [first variant's override, this variant's override]}`` for every override key that differs
    (JSON-ready; a key one side does not set shows ``"(not set)"``)."""
    missing = "(not set)"
    left, right = plain(baseline), plain(overrides)
    return {key: [left.get(key, missing), right.get(key, missing)] for key in sorted(set(left) | set(right))
            if left.get(key, missing) != right.get(key, missing)}
