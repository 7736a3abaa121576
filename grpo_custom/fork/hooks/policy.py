"""What the fork's policy-loss edit and the trainer set-up call: the policy loss, trust-region schedules, estimator mixes.

``policy_per_token_loss`` runs in TRL's ``_compute_loss``; under Unsloth the same spec runs inside its fast loss
(``grpo_custom.unsloth.policy_term``).
"""
from __future__ import annotations

import torch

from grpo_custom.algorithms.policy_losses import PolicyLossSpec, build_policy_loss_spec

# TRL's loss types whose only role, beside a configured policy loss, is the aggregation
AGGREGATION_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
# config field → policy-loss option
TRUST_REGION_FIELDS = {"epsilon": "epsilon_low", "epsilon_high": "epsilon_high", "delta": "delta"}


def trust_region(args) -> dict:
    """``{epsilon_low, epsilon_high, delta}`` for the policy loss: the config's schedules where scheduled, else
    its values, read as TRL reads them (an unset ``epsilon_high`` is ``epsilon``)."""
    schedules = dict(getattr(args, "trust_region_schedules", None) or {})
    low, high = args.epsilon, args.epsilon_high if args.epsilon_high is not None else args.epsilon
    values = {"epsilon_low": schedules.get("epsilon", low),
              "epsilon_high": schedules.get("epsilon_high", high),
              "delta": schedules.get("delta", args.delta)}
    return values


def policy_loss_spec(args) -> PolicyLossSpec:
    """The policy loss ``args`` configure (``ppo_clip`` on a stock TRL config); checks it fits TRL's loss options.

    Raises:
        ValueError: a non-stock policy loss (another loss, options, or a scheduled trust region) with a
            ``loss_type`` that is itself a policy objective (cispo, sapo, vespo) or with sequence-level
            importance sampling (use ``policy_loss="gspo"``).
    """
    spec = build_policy_loss_spec(getattr(args, "policy_loss", "ppo_clip"), getattr(args, "policy_loss_kwargs", None),
                                  trust_region(args))
    if not spec.stock:
        what = f"policy_loss={spec.label!r}" + (f" with scheduled {spec.scheduled}" if spec.scheduled else "")
        if args.loss_type not in AGGREGATION_LOSS_TYPES:
            raise ValueError(
                f"{what} replaces the policy term; loss_type={args.loss_type!r} is a policy objective of its own. "
                f"Choose the aggregation with loss_type in {list(AGGREGATION_LOSS_TYPES)} (policy_loss='cispo' / "
                "'sapo' are the registered versions of those objectives).")
        if args.importance_sampling_level != "token":
            raise ValueError(f"{what} computes its own ratio: importance_sampling_level='sequence' does not apply "
                             "(policy_loss='gspo' is the sequence-level ratio).")
    return spec


def log_policy_metrics(trainer, mode: str, spec: PolicyLossSpec, step: int, metrics: dict) -> None:
    """``policy_loss/<metric>`` for every metric and ``policy_loss/<option>`` for every scheduled option."""
    for key, value in metrics.items():
        trainer._metrics[mode][f"policy_loss/{key}"].append(float(value))
    for key, value in spec.values_at(step).items():
        trainer._metrics[mode][f"policy_loss/{key}"].append(value)


def policy_per_token_loss(trainer, per_token_loss, *, per_token_logps, old_per_token_logps, advantages, mask):
    """TRL's per-token policy loss, or the configured policy loss's [B, T] (TRL's masks, KL and aggregation follow).

    The stock spec (``ppo_clip``, constant trust region) returns ``per_token_loss`` untouched; otherwise the
    loss runs at ``trainer.state.global_step`` (scheduled options as tensors) on ``advantages`` broadcast to
    [B, T], and its metrics are logged as ``policy_loss/<metric>``.
    """
    extras = getattr(trainer, "grpo_custom", None)
    spec = None if extras is None else extras.policy_loss
    if spec is None or spec.stock:
        return per_token_loss
    step = int(trainer.state.global_step)
    mask = mask.to(per_token_logps.dtype)
    per_token, metrics = spec(per_token_logps, old_per_token_logps, advantages.expand_as(per_token_logps), mask,
                              step=step)
    log_policy_metrics(trainer, "train" if trainer.model.training else "eval", spec, step, metrics)
    return per_token


def resolve_estimator(args):
    """``(estimator callable or name, options)`` from ``args``: a dict ``advantage_estimator`` is a mix."""
    choice = getattr(args, "advantage_estimator", "grpo")
    if isinstance(choice, dict):
        from grpo_custom.algorithms.estimators.mixing import mix_estimators

        return mix_estimators(choice, getattr(args, "advantage_estimator_kwargs", None),
                              defaults={"grpo": {"scale_rewards": args.scale_rewards}}), {}
    return choice, None


def mixed_advantages(trainer, estimator, rewards, num_generations, data: dict, mask, log) -> torch.Tensor:
    """A mix's advantages at the generation step; logs each component's ``advantages/<label>/{mean,std,abs_max,weight}``."""
    step = int(trainer.state.global_step)
    parts = estimator.components_at(rewards, num_generations, step=step, **data)
    for label, weight in estimator.weights_at(step).items():
        log(parts[label], mask, prefix=f"advantages/{label}")
        trainer._metrics["train" if trainer.model.training else "eval"][f"advantages/{label}/weight"].append(weight)
    return estimator.combine(parts, step)
