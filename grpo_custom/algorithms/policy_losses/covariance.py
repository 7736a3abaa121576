"""Built-in policy losses that act on the few tokens of highest covariance between log π and A: clip_cov, kl_cov.

Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models"
(arXiv 2505.22617); definitions follow verl's ``core_algos.py``. The selection is over the whole batch
passed in (one micro-batch), on detached values.
"""
from __future__ import annotations

import torch

from .registry import clamp, masked_mean, register_policy_loss


def _centered_covariance(log_probs, advantages, mask) -> torch.Tensor:
    """(A − mean_m A)·(log π − mean_m log π) per token, means over the masked tokens, detached: [B, T]."""
    log_probs, advantages = log_probs.detach(), advantages.detach()
    return (advantages - masked_mean(advantages, mask)) * (log_probs - masked_mean(log_probs, mask))


@register_policy_loss("clip_cov")
def clip_cov(log_probs, old_log_probs, advantages, mask, *, epsilon_low=0.2, epsilon_high=0.2,
             clip_cov_ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0, generator=None):
    """L = max(−A·r, −A·clip(r, 1 − ε_low, 1 + ε_high))·c, c = 0 on a random few selected tokens, else 1.

    Clip-Cov (arXiv 2505.22617): among the completion tokens not already clipped by PPO whose covariance
    cov_t = (A_t − Ā)(log π_t − mean log π) lies in (lb, ub), k = max(⌊ratio · Σ m⌋, 1) are picked
    uniformly at random (``torch.randperm`` over them in row-major order, with ``generator``) and their
    gradient is cut (c = 0). Defaults (verl): ratio 2e-4, bounds (1, 5), ε 0.2/0.2.

    Args:
        clip_cov_ratio: share of the masked tokens to detach, in (0, 1].
        clip_cov_lb, clip_cov_ub: the covariance window.
        generator: a ``torch.Generator`` for the random pick (reproducible runs); None uses torch's global RNG.

    Returns:
        per-token loss [B, T]; metrics ``clip_frac`` (share of tokens detached), ``ppo_kl``.
    """
    log_ratio = log_probs - old_log_probs  # [B, T]
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    with torch.no_grad():
        clipped_by_ppo = (loss2 > loss1) & (mask > 0)
        covariance = _centered_covariance(log_probs, advantages, mask)
        candidates = (covariance > clip_cov_lb) & (covariance < clip_cov_ub) & (mask > 0) & ~clipped_by_ppo
        positions = torch.nonzero(candidates)  # [K, 2] row-major
        count = max(int(clip_cov_ratio * float(mask.sum())), 1)
        keep = torch.ones_like(log_probs)
        if len(positions) > 0:
            device = generator.device if generator is not None else "cpu"
            order = torch.randperm(len(positions), generator=generator, device=device).to(positions.device)
            chosen = positions[order[:min(count, len(positions))]]
            keep[chosen[:, 0], chosen[:, 1]] = 0.0
    per_token = torch.maximum(loss1, loss2) * keep
    with torch.no_grad():
        metrics = {"clip_frac": masked_mean((keep == 0).to(mask.dtype), mask),
                   "ppo_kl": masked_mean(-log_ratio, mask)}
    return per_token, metrics


@register_policy_loss("kl_cov")
def kl_cov(log_probs, old_log_probs, advantages, mask, *, kl_cov_ratio=2e-4, ppo_kl_coef=0.1):
    """L = −A·r, plus β·|lr| on the k tokens of largest covariance, k = max(⌊ratio · Σ m⌋, 1).

    KL-Cov (arXiv 2505.22617): no clip; the top-k completion tokens by cov_t = (A_t − Ā)(log π_t − mean
    log π) get the KL penalty β·|log π − log π_old| instead. Defaults (verl config): ratio 2e-4, β =
    ``ppo_kl_coef`` 0.1.

    Returns:
        per-token loss [B, T]; metrics ``kl_cov_frac`` (share of tokens penalized), ``ppo_kl``.
    """
    log_ratio = log_probs - old_log_probs  # [B, T]
    ratio = torch.exp(log_ratio)
    loss = -advantages * ratio
    penalized = loss + ppo_kl_coef * log_ratio.abs()
    with torch.no_grad():
        valid = (mask > 0).reshape(-1)
        selected = torch.zeros_like(valid)
        count = int(valid.sum())
        if count > 0:
            covariance = _centered_covariance(log_probs, advantages, mask).reshape(-1)[valid]  # [n]
            top = torch.topk(covariance, max(1, int(count * kl_cov_ratio)), largest=True).indices
            selected[torch.nonzero(valid).squeeze(-1)[top]] = True
        selected = selected.view_as(mask)
    per_token = torch.where(selected, penalized, loss)
    with torch.no_grad():
        metrics = {"kl_cov_frac": masked_mean(selected.to(mask.dtype), mask),
                   "ppo_kl": masked_mean(-log_ratio, mask)}
    return per_token, metrics
