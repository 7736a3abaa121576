"""Honest configuration: what actually runs, and options a fast path would silently drop.

Unsloth's ``UnslothGRPOConfig`` rewrites some options without a word (``loss_type="dapo"`` turns
on ``mask_truncated_completions`` and sets ``epsilon_high``; ``dr_grpo`` turns ``scale_rewards``
off; its defaults differ from TRL's). :func:`record_requested_config` keeps, next to the config
that runs, the config TRL semantics give for the same arguments; :func:`config_differences`
compares them; ``trainer.effective_config()`` returns what runs and the differences are printed
once when the trainer starts. Options Unsloth's fast loss ignores raise
:class:`UnsupportedOnFastPathError` instead of being dropped.
"""
from __future__ import annotations

import dataclasses
import logging

logger = logging.getLogger(__name__)

REQUESTED_ATTRIBUTE = "_grpo_custom_requested"


class UnsupportedOnFastPathError(ValueError):
    """A TRL option that Unsloth's fast GRPO loss would ignore was set."""


def record_requested_config(config, config_class, args, kwargs) -> None:
    """Store on ``config`` the ``config_class`` (TRL semantics) built from the same user arguments."""
    names = {field.name for field in dataclasses.fields(config_class) if field.init}
    requested_kwargs = {name: value for name, value in kwargs.items() if name in names}
    requested = config_class(*args, **requested_kwargs)
    object.__setattr__(config, REQUESTED_ATTRIBUTE, requested)


def config_differences(config) -> dict[str, tuple]:
    """``{option: (requested, effective)}`` for every option whose running value differs from the request."""
    requested = getattr(config, REQUESTED_ATTRIBUTE, None)
    if requested is None:
        return {}
    differences = {}
    for field in dataclasses.fields(requested):
        if not field.init or not hasattr(config, field.name):
            continue
        asked, running = getattr(requested, field.name), getattr(config, field.name)
        try:
            same = asked == running
            same = bool(same) if not isinstance(same, bool) else same
        except Exception:  # objects without a usable ==
            same = asked is running
        if not same:
            differences[field.name] = (asked, running)
    return differences


def effective_config(trainer) -> dict:
    """What this trainer actually runs: the config's values plus the trainer-level settings that matter.

    Returns a dict ``{"config": {option: value}, "trainer": {...}, "differences": {option: (asked, running)}}``.
    """
    config = trainer.args
    values = {field.name: getattr(config, field.name) for field in dataclasses.fields(config) if field.init}
    extras = getattr(trainer, "grpo_custom", None)
    runtime = {
        "trainer_class": f"{type(trainer).__module__}.{type(trainer).__name__}",
        "loss_type": getattr(trainer, "loss_type", None),
        "beta": getattr(trainer, "beta", None),
        "epsilon_low": getattr(trainer, "epsilon_low", None),
        "epsilon_high": getattr(trainer, "epsilon_high", None),
        "scale_rewards": getattr(trainer, "scale_rewards", None),
        "mask_truncated_completions": getattr(trainer, "mask_truncated_completions", None),
        "advantage_estimator": None if extras is None else extras.estimator_name,
        "regularizers": [] if extras is None else [spec.metric_prefix for spec in extras.regularizers],
    }
    return {"config": values, "trainer": runtime, "differences": config_differences(config)}


def report_differences(config) -> None:
    """Log once, at trainer start, every option whose running value differs from what was asked."""
    differences = config_differences(config)
    if differences:
        lines = [f"  {name}: asked {asked!r}, running {running!r}" for name, (asked, running) in sorted(differences.items())]
        logger.warning("grpo-custom: Unsloth changed these options:\n" + "\n".join(lines))


def check_fast_path_options(args) -> None:
    """Raise for TRL options that Unsloth's fast GRPO loss ignores (unsloth_zoo 2026.10.7)."""
    if getattr(args, "use_adaptive_entropy", False):
        raise UnsupportedOnFastPathError(
            "use_adaptive_entropy=True is ignored by Unsloth's fast GRPO loss (its adaptive entropy controller "
            "is not implemented there). Use a fixed entropy_coef, or grpo-custom's entropy regularizer with a "
            "scheduled coefficient: regularizers=[{'name': 'entropy', 'coef': grpo_custom.Schedule.linear(...)}]."
        )
