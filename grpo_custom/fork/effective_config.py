"""What a trainer actually runs: ``trainer.effective_config()`` (config values, trainer settings) and the
options whose running value differs from what was asked (recorded by the Unsloth patch)."""
from __future__ import annotations

import dataclasses

REQUESTED_ATTRIBUTE = "_grpo_custom_requested"


def same_value(asked, running) -> bool:
    """``asked == running`` as a bool; objects without a usable ``==`` (tensors, arrays) compare by identity."""
    try:
        same = asked == running
        return bool(same) if not isinstance(same, bool) else same
    except Exception:
        return asked is running


def config_differences(config) -> dict[str, tuple]:
    """``{option: (requested, effective)}`` for every option whose running value differs from the request.

    The request is what the Unsloth patch recorded on the config (``grpo_custom.unsloth.requested_config``,
    options named as the user wrote them); a config nobody recorded has no differences.
    """
    requested = getattr(config, REQUESTED_ATTRIBUTE, None)
    if requested is None:
        return {}
    return requested.differences(config)


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
