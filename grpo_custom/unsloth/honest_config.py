"""Honest configuration: what actually runs, and options a fast path would silently drop.

Unsloth's ``UnslothGRPOConfig`` rewrites some options without a word (``loss_type="dapo"`` turns
on ``mask_truncated_completions`` and sets ``epsilon_high``; ``dr_grpo`` turns ``scale_rewards``
off; a batch that is not a multiple of ``num_generations`` becomes ``num_generations``; ``warmup_ratio``
goes to ``warmup_steps``; its defaults differ from TRL's). :func:`record_requested_config` keeps, next
to the config that runs, the options as the user wrote them and the config TRL semantics give for them
(:mod:`grpo_custom.unsloth.requested_config`; it never rejects or changes a config Unsloth runs);
:func:`config_differences` (:mod:`grpo_custom.fork.effective_config`) compares them under the names
the user wrote; ``trainer.effective_config()`` returns what runs and the differences are printed once
when the trainer starts. Options Unsloth's fast loss
ignores raise :class:`UnsupportedOnFastPathError` instead of being dropped.
"""
from __future__ import annotations

import logging

from grpo_custom.fork.effective_config import REQUESTED_ATTRIBUTE, config_differences  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)


class UnsupportedOnFastPathError(ValueError):
    """A TRL option that Unsloth's fast GRPO loss would ignore was set."""


def record_requested_config(config, config_class, init, args, kwargs) -> None:
    """Store on ``config`` (Unsloth's, built by ``init`` from ``args``/``kwargs``) the options as written and
    the ``config_class`` (TRL semantics) built from them (:func:`~grpo_custom.unsloth.requested_config.build_requested_config`)."""
    from grpo_custom.unsloth.requested_config import build_requested_config, written_options

    requested = build_requested_config(config, config_class, written_options(init, args, kwargs))
    object.__setattr__(config, REQUESTED_ATTRIBUTE, requested)


def report_differences(config) -> None:
    """Log once, at trainer start, every option whose running value differs from what was asked."""
    requested = getattr(config, REQUESTED_ATTRIBUTE, None)
    if requested is None:
        return
    written, defaults = requested.written_differences(config)
    if not written and not defaults:
        return
    lines = [f"  {name}: asked {asked!r}, running {running!r}" for name, (asked, running) in sorted(written.items())]
    if defaults:
        changes = ", ".join(f"{name} {trl!r}->{running!r}" for name, (trl, running) in sorted(defaults.items()))
        lines.append(f"  defaults Unsloth changes (not written; TRL's value->running): {changes}")
    if requested.trl_error and requested.trl_error != requested.device_error:
        lines.append(f"  TRL alone refuses the options as written: {requested.trl_error}")
    if requested.device_error:
        lines.append(f"  TRL alone also refuses its own precision defaults on this machine: {requested.device_error}")
    head = "Unsloth changed these options you wrote:" if written else "Unsloth changed no option you wrote."
    logger.warning("grpo-custom: " + head + "\n" + "\n".join(lines))


def check_fast_path_options(args) -> None:
    """Raise for TRL options that Unsloth's fast GRPO loss ignores (none left: ``use_adaptive_entropy`` runs in
    :mod:`grpo_custom.unsloth.adaptive_entropy`)."""


def check_fast_path_config(args) -> None:
    """The check a trainer compiled by Unsloth runs when it is built (installed on its class by the patch as
    ``grpo_custom_fast_path_check``): refuse options the fast loss drops, report Unsloth's config rewrites."""
    check_fast_path_options(args)
    check_engine(args)
    check_config_class(args)
    report_differences(args)


def check_config_class(args) -> None:
    """Warn where grpo-custom's compiled trainer gets a config built before ``patch_unsloth()`` (stock Unsloth's or
    TRL's ``GRPOConfig``, imported above the patch line): it never went through the patched config, so
    grpo-custom's options are at their defaults and Unsloth's rewrites are not recorded."""
    import warnings

    from grpo_custom.unsloth.patch import active_patch

    active = active_patch()
    if active is None or args is None or isinstance(args, active.config_class):
        return
    made = f"{type(args).__module__}.{type(args).__qualname__}"
    warnings.warn(
        f"grpo-custom: the trainer's args is a {made} built before grpo_custom.patch_unsloth() (not the patched "
        f"config class, {active.config_class.__module__}.{active.config_class.__qualname__}): grpo-custom's options "
        "take their defaults and Unsloth's rewrites of it are not reported. Put `grpo_custom.patch_unsloth()` "
        "before `from trl import GRPOConfig, GRPOTrainer` (right after `import unsloth`), or build the config again "
        "after it.", stacklevel=2)


def check_engine(args) -> None:
    """Refuse DeepSpeed (ZeRO-1/2/3) under Unsloth's compiled trainer, at start: grpo-custom supports Unsloth's DDP and
    native FSDP2 paths (docs/multi_gpu.md); Unsloth itself calls DeepSpeed unreliable (unsloth issue 859) and
    nothing here has run it. ``args.deepspeed`` or an ``accelerate launch`` DeepSpeed config selects it."""
    from grpo_custom.algorithms.sharding import launch_engine

    engine, world_size = launch_engine()
    if getattr(args, "deepspeed", None) or engine.startswith("DeepSpeed"):
        raise ValueError(
            f"grpo-custom: DeepSpeed ({engine if engine.startswith('DeepSpeed') else 'args.deepspeed'}, world size "
            f"{world_size}) is not supported with Unsloth's compiled trainer (patch_unsloth()). Under Unsloth "
            "launch with torchrun (DDP) or UNSLOTH_FSDP2=1 torchrun (its native FSDP2); for DeepSpeed ZeRO use "
            "grpo-custom without Unsloth (accelerate_configs/zero2.yaml, zero3.yaml)."
        )
