"""Pluggable policy objectives: a registry of policy losses and the built-ins (verl's set, plus PPO's clip).

``fn(log_probs, old_log_probs, advantages, mask, *, <options>) -> (per_token_loss, metrics)``; see
:func:`register_policy_loss` for the contract.
"""
from . import clipped, covariance  # noqa: F401  (registers the built-ins)
from .clipped import cispo, dual_clip, geo_mean, gpg, gspo, ppo_clip, sapo
from .covariance import clip_cov, kl_cov
from .registry import (
    DATA_INPUTS,
    OPTION_RULES,
    POLICY_LOSSES,
    TRUST_REGION_OPTIONS,
    PolicyLossSpec,
    build_policy_loss_spec,
    get_policy_loss,
    list_policy_losses,
    register_policy_loss,
    validate_policy_loss_options,
)

__all__ = [
    "DATA_INPUTS", "OPTION_RULES", "POLICY_LOSSES", "TRUST_REGION_OPTIONS", "PolicyLossSpec",
    "build_policy_loss_spec", "cispo", "clip_cov", "dual_clip", "geo_mean", "get_policy_loss", "gpg", "gspo",
    "kl_cov", "list_policy_losses", "ppo_clip", "register_policy_loss", "sapo", "validate_policy_loss_options",
]
