"""Which trainer/config classes ``grpo_custom.GRPOTrainer`` / ``GRPOConfig`` name right now."""
from __future__ import annotations


def current_trainer_class() -> type:
    """Unsloth's compiled fork while :func:`grpo_custom.patch_unsloth` is active, else the plain fork."""
    from . import unsloth_patch

    active = unsloth_patch.active_patch()
    if active is not None:
        return active.trainer_class
    from .fork import load_fork

    return load_fork().GRPOTrainer


def current_config_class() -> type:
    """Unsloth's config built on grpo-custom's while patched, else :class:`grpo_custom.config.GRPOConfig`."""
    from . import unsloth_patch

    active = unsloth_patch.active_patch()
    if active is not None:
        return active.config_class
    from .config import GRPOConfig

    return GRPOConfig
