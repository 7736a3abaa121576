"""Honest configuration: what actually runs, and options a fast path would silently drop.

Unsloth's ``UnslothGRPOConfig`` rewrites some options without a word (``loss_type="dapo"`` turns
on ``mask_truncated_completions`` and sets ``epsilon_high``; ``dr_grpo`` turns ``scale_rewards``
off; its defaults differ from TRL's). :func:`record_requested_config` keeps, next to the config
that runs, the config TRL semantics give for the same arguments; :func:`config_differences`
(:mod:`grpo_custom.fork.effective_config`) compares them; ``trainer.effective_config()`` returns
what runs and the differences are printed once when the trainer starts. Options Unsloth's fast loss
ignores raise :class:`UnsupportedOnFastPathError` instead of being dropped.
"""
from __future__ import annotations

import dataclasses
import logging

from grpo_custom.fork.effective_config import REQUESTED_ATTRIBUTE, config_differences

logger = logging.getLogger(__name__)


class UnsupportedOnFastPathError(ValueError):
    """A TRL option that Unsloth's fast GRPO loss would ignore was set."""


def record_requested_config(config, config_class, args, kwargs) -> None:
    """Store on ``config`` the ``config_class`` (TRL semantics) built from the same user arguments."""
    names = {field.name for field in dataclasses.fields(config_class) if field.init}
    requested_kwargs = {name: value for name, value in kwargs.items() if name in names}
    requested = config_class(*args, **requested_kwargs)
    object.__setattr__(config, REQUESTED_ATTRIBUTE, requested)


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


def check_fast_path_config(args) -> None:
    """The check a trainer compiled by Unsloth runs when it is built (installed on its class by the patch as
    ``grpo_custom_fast_path_check``): refuse options the fast loss drops, report Unsloth's config rewrites."""
    check_fast_path_options(args)
    report_differences(args)
