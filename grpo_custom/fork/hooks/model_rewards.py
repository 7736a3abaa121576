"""The hook after TRL scores a batch: every column of ``rewards_per_func`` goes through the guard's classification.

Reward functions (and :class:`~grpo_custom.rewards.reward_model.RewardModelReward`) are checked by their guard
(``rewards/guard.py``) before TRL stores their values, but two things reach TRL's reward tensor past it:

* a reward model given as a plain ``nn.Module``: TRL scores it itself, inside ``_calculate_rewards``
  (``rewards_per_func[:, i] = model(**inputs).logits[:, 0]``), with no guard: an overflowed (±inf) or NaN logit;
* a finite value beyond float32's range (``|r| > 3.4e38``, e.g. ``1e39``): good as a Python float, ±inf in TRL's
  float32 ``rewards_per_func``.

Either would reach TRL's group mean/std, its ``rewards/<name>/mean`` metric and every estimator. This hook applies
the guard's classification and the ``reward_errors`` policy to them, right after ``_calculate_rewards`` returns the
gathered ``rewards_per_func``.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from grpo_custom.fork.hooks.configure import _option

SHOWN_SAMPLES = 8  # bad samples listed per reward in a warning


def check_scored_rewards(trainer, rewards_per_func: torch.Tensor) -> torch.Tensor:
    """``rewards_per_func`` [N, F] (float32, NaN = "cannot score") with every bad score classified per sample.

    Each column is :func:`~grpo_custom.rewards.guard.classify_reward_tensor`'d: an ``nn.Module`` reward model's
    column with NaN a bad score (a reward model cannot return "cannot score"), so NaN and ±inf are ``"non_finite"``;
    any other column with NaN meaning "cannot score" (the guard's ``None``), so ±inf is ``"non_finite"``. The
    samples are the gathered generation batch (all processes, process-major), so every process takes the same
    decision.

    Policy ``reward_errors`` of the config (``"raise"`` for a stock TRL config, as for reward functions):

    * ``"raise"``: :class:`~grpo_custom.rewards.guard.RewardFunctionError` naming the reward (model or function),
      the first bad sample index and its value;
    * ``"nan"``: each bad score becomes NaN (unscored: TRL's NaN-aware statistics leave it out), a
      :class:`~grpo_custom.rewards.guard.BadRewardWarning` names the reward and the sample indices, and
      ``reward_errors/<name>/non_finite`` counts them (recorded on the main process only: the batch is gathered).

    Returns:
        ``rewards_per_func`` itself when no score is bad (one device sync), else a copy with the bad scores set to
        NaN (same dtype and device).
    """
    from grpo_custom.rewards.guard import BadRewardWarning, RewardFunctionError, classify_reward_tensor, describe_reward_value

    models = [index for index, func in enumerate(trainer.reward_funcs) if isinstance(func, nn.Module)]
    _, bad = classify_reward_tensor(rewards_per_func, nan_means_unscored=True)  # [N, F] bool: ±inf
    if models:
        bad[:, models] = classify_reward_tensor(rewards_per_func[:, models], nan_means_unscored=False)[1]  # NaN too
    if not bool(bad.any()):  # the one sync per batch
        return rewards_per_func
    policy = _option(trainer.args, "reward_errors", "raise")
    extras = getattr(trainer, "grpo_custom", None)
    checked = rewards_per_func.clone()
    for column, name in enumerate(trainer.reward_func_names):
        samples = bad[:, column].nonzero(as_tuple=True)[0].tolist()
        if not samples:
            continue
        values = [describe_reward_value(float(rewards_per_func[index, column]), typed=False) for index in samples]
        if column in models:
            what, problem = f"Reward model {name!r}", "(its logits[:, 0]; "
        else:
            what, problem = f"Reward function {name!r}", "(a value beyond float32's range in TRL's reward tensor; "
        if policy == "raise":
            raise RewardFunctionError(
                f"{what} returned a non-finite score at sample index {samples[0]}: {values[0]} {problem}"
                f"{len(samples)} bad of {rewards_per_func.shape[0]} samples). Set reward_errors='nan' to train on "
                "with those samples unscored."
            )
        checked[samples, column] = math.nan
        shown = ", ".join(f"{index}: {value}" for index, value in list(zip(samples, values))[:SHOWN_SAMPLES])
        warnings.warn(
            f"{what}: {len(samples)} reward(s) set to None (non_finite={len(samples)}) at sample "
            f"index(es) {{{shown}{', ...' if len(samples) > SHOWN_SAMPLES else ''}}}.",
            BadRewardWarning,
            stacklevel=2,
        )
        if extras is not None and trainer.accelerator.is_main_process:
            key = f"reward_errors/{name}/non_finite"
            extras.pending_metrics[key] = extras.pending_metrics.get(key, 0.0) + float(len(samples))
    return checked
