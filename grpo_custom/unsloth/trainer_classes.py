"""Which trainer/config classes ``grpo_custom.GRPOTrainer`` / ``GRPOConfig`` name right now."""
from __future__ import annotations


def current_trainer_class() -> type:
    """Unsloth's compiled fork while :func:`grpo_custom.patch_unsloth` is active, else the plain fork."""
    from grpo_custom.unsloth.patch import active_patch

    active = active_patch()
    if active is not None:
        return active.trainer_class
    from grpo_custom.fork.generate import load_fork

    return load_fork().GRPOTrainer


def current_config_class() -> type:
    """Unsloth's config built on grpo-custom's while patched, else :class:`grpo_custom.fork.config.GRPOConfig`."""
    from grpo_custom.unsloth.patch import active_patch

    active = active_patch()
    if active is not None:
        return active.config_class
    from grpo_custom.fork.config import GRPOConfig

    return GRPOConfig
