"""The algorithm-defining configuration stored in a checkpoint, and its comparison when a run resumes."""
from __future__ import annotations

import json
import logging
import os
import re

logger = logging.getLogger(__name__)

FINGERPRINT_FIELDS = (
    "advantage_estimator", "advantage_estimator_kwargs", "multi_objective_aggregation", "scale_rewards", "beta",
    "loss_type", "num_generations", "epsilon", "epsilon_high", "delta", "importance_sampling_level",
    "mask_truncated_completions", "top_entropy_quantile", "regularizers", "reward_weights", "reward_schedule",
    "task_column", "task_normalization", "task_weights", "policy_loss", "policy_loss_kwargs",
    "value_function",
)


def algorithm_fingerprint(trainer) -> dict:
    """:data:`FINGERPRINT_FIELDS` of ``trainer.args`` as plain JSON values (absent fields None, callables by name,
    other objects by ``repr`` without memory addresses) and the reward function names (``reward_funcs``).
    ``value_function`` is its validated form with every field (``ValueFunctionConfig.to_dict``), so equal
    settings written differently (a dict, the defaults spelt out, a ``ValueFunctionConfig``) compare equal."""
    from grpo_custom.fork.config import _plain

    fingerprint = {name: _plain(getattr(trainer.args, name, None)) for name in FINGERPRINT_FIELDS}
    value_config = getattr(trainer.args, "value_function_config", None)  # what it means, not how it was written
    fingerprint["value_function"] = value_config.to_dict() if value_config is not None else None
    fingerprint["reward_funcs"] = list(trainer.reward_func_names)
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", json.dumps(fingerprint, default=repr))
    return json.loads(text)


def check_fingerprint(trainer, saved: dict | None, path: str) -> None:
    """Compare a checkpoint's fingerprint (read from ``path``) with this run's.

    Raises:
        ValueError: naming every changed field (checkpoint value, this run's value) and the checkpoint, unless
            ``args.resume_allow_config_change`` is True (then the same message is a warning).
    """
    if saved is None:
        logger.warning("%s has no algorithm fingerprint (written by an older grpo-custom): not compared.", path)
        return
    current = algorithm_fingerprint(trainer)
    changed = [change for name in sorted(set(saved) | set(current)) if saved.get(name) != current.get(name)
               for change in _changes(name, saved.get(name), current.get(name))]
    if not changed:
        return
    message = f"Resuming from {os.path.dirname(path)} with a different algorithm configuration: " + "; ".join(changed)
    if getattr(trainer.args, "resume_allow_config_change", False):
        logger.warning("%s (allowed by resume_allow_config_change=True).", message)
        return
    raise ValueError(message + ". Resume with the checkpoint's configuration, or set resume_allow_config_change=True "
                     "to continue with the new one.")


def _changes(name: str, saved, current) -> list[str]:
    """``"name: saved in the checkpoint, current now"``; for two dicts (e.g. ``value_function``), one such line per
    changed key, ``name['key']``."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [f"{name}[{key!r}]: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
                for key in sorted(set(saved) | set(current), key=str) if saved.get(key) != current.get(key)]
    return [f"{name}: {saved!r} in the checkpoint, {current!r} now"]
