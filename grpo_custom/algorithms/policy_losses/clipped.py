"""Built-in policy losses on the token ratio r = π/π_old: ppo_clip, dual_clip, gspo, sapo, gpg, cispo, geo_mean.

Definitions follow verl's ``core_algos.py`` losses of the same names (``vanilla`` for dual_clip); notation:
lr = log π − log π_old (per token), r = exp(lr), A the advantage, m the completion mask, n_i = Σ_t m_it.
"""
from __future__ import annotations

import torch

from .registry import clamp, masked_mean, register_policy_loss

LOG_RATIO_LIMIT = 20.0  # verl clamps lr to ±20 before exp in vanilla/dual-clip, sapo and cispo


@register_policy_loss("ppo_clip")
def ppo_clip(log_probs, old_log_probs, advantages, mask, *, epsilon_low=0.2, epsilon_high=0.2, delta=None):
    """L = −min(r̃·A, clip(r, 1 − ε_low, 1 + ε_high)·A), r̃ = min(r, δ) with δ set, else r.

    PPO's clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) with DAPO's decoupled ε_low/ε_high
    (arXiv 2503.14476) and INTELLECT-2's two-sided δ (arXiv 2505.07291): TRL 1.15's and Unsloth's token-level
    computation, op for op (no clamp on lr). The default: with its defaults the trainer keeps TRL's /
    Unsloth's own code. Any ``loss_type`` aggregates it as TRL does.

    Args:
        log_probs, old_log_probs, advantages, mask: [B, T] float.
        epsilon_low, epsilon_high: clip range (config ``epsilon`` / ``epsilon_high``; default 0.2 / 0.2).
        delta: upper bound of the unclipped ratio (config ``delta``; default None = off).

    Returns:
        per-token loss [B, T]; metrics ``clip_frac`` (share of tokens where the clipped term is taken),
        ``ppo_kl`` (masked mean of −lr).
    """
    log_ratio = log_probs - old_log_probs  # [B, T]
    ratio = torch.exp(log_ratio)
    clipped = clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    unclipped = ratio if delta is None else clamp(ratio, high=delta)
    loss1, loss2 = unclipped * advantages, clipped * advantages
    per_token = -torch.min(loss1, loss2)
    with torch.no_grad():
        metrics = {"clip_frac": masked_mean((loss2 < loss1).to(mask.dtype), mask),
                   "ppo_kl": masked_mean(-log_ratio, mask)}
    return per_token, metrics


@register_policy_loss("dual_clip")
def dual_clip(log_probs, old_log_probs, advantages, mask, *, epsilon_low=0.2, epsilon_high=0.2, clip_ratio_c=3.0):
    """L = max(−A·r, −A·clip(r, 1 − ε_low, 1 + ε_high)), and for A < 0 additionally min(L, −A·c).

    Dual-clip PPO (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL", arXiv 1912.09729):
    for negative advantages the loss is bounded by c·|A| however large r grows. lr is clamped to ±20 before
    exp (verl's ``vanilla`` loss, which this follows; defaults ε 0.2/0.2, c = 3).

    Args:
        clip_ratio_c: the dual-clip bound c (> 1).

    Returns:
        per-token loss [B, T]; metrics ``clip_frac``, ``clip_frac_lower`` (share of tokens with A < 0 where
        the bound c·|A| is taken), ``ppo_kl``.
    """
    log_ratio = torch.clamp(log_probs - old_log_probs, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)  # [B, T]
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    clipped = torch.maximum(loss1, loss2)
    bound = -advantages * clip_ratio_c
    per_token = torch.where(advantages < 0, torch.minimum(bound, clipped), clipped)
    with torch.no_grad():
        metrics = {"clip_frac": masked_mean((loss2 > loss1).to(mask.dtype), mask),
                   "clip_frac_lower": masked_mean(((clipped > bound) & (advantages < 0)).to(mask.dtype), mask),
                   "ppo_kl": masked_mean(-log_ratio, mask)}
    return per_token, metrics


@register_policy_loss("gspo")
def gspo(log_probs, old_log_probs, advantages, mask, *, epsilon_low=0.2, epsilon_high=0.2):
    """L_it = max(−A·s_it, −A·clip(s_it, 1 − ε_low, 1 + ε_high)), s_it = sg(s_i)·π_t/sg(π_t).

    GSPO (Zheng et al. 2025, arXiv 2507.18071), its token form GSPO-token: the sequence ratio
    s_i = exp(Σ_t m_it·lr_it / n_i) (the geometric mean of the token ratios) with each token's own
    gradient, log s_it clamped at 10 (verl). Per-sequence in value; ``loss_type="grpo"`` (token mean per
    sequence, then mean over sequences) reproduces the paper's objective and its gradient when A is the
    sequence's advantage. The paper uses ε_low 3e-4, ε_high 4e-4; the trainer passes the config's ε.

    Returns:
        per-token loss [B, T]; metrics ``clip_frac``, ``ppo_kl``.
    """
    log_ratio = log_probs - old_log_probs  # [B, T]
    sequence_log_ratio = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [B]
    log_token_ratio = log_probs - log_probs.detach() + sequence_log_ratio.detach().unsqueeze(-1)  # [B, T]
    ratio = torch.exp(torch.clamp(log_token_ratio, max=10.0))
    loss1 = -advantages * ratio
    loss2 = -advantages * clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = torch.maximum(loss1, loss2)
    with torch.no_grad():
        metrics = {"clip_frac": masked_mean((loss2 > loss1).to(mask.dtype), mask),
                   "ppo_kl": masked_mean(-log_ratio, mask)}
    return per_token, metrics


@register_policy_loss("sapo")
def sapo(log_probs, old_log_probs, advantages, mask, *, tau_pos=1.0, tau_neg=1.05):
    """L = −f_τ(r)·A, f_τ(r) = σ(τ·(r − 1))·4/τ, τ = τ_pos if A > 0 else τ_neg.

    SAPO (soft adaptive policy optimization, arXiv 2511.20347): a smooth sigmoid gate replaces the hard
    clip; f_τ has slope f'(1) = 4·σ(0)·(1 − σ(0)) = 1 at r = 1, so on-policy its gradient is the plain
    policy gradient. lr clamped to ±20 (verl). Defaults τ_pos 1.0, τ_neg 1.05 (verl's and TRL's). The paper aggregates per sequence
    (``loss_type="grpo"``).

    Returns:
        per-token loss [B, T]; metrics ``ppo_kl``.
    """
    log_ratio = torch.clamp(log_probs - old_log_probs, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)  # [B, T]
    ratio = torch.exp(log_ratio)
    tau_pos = torch.as_tensor(tau_pos, dtype=log_probs.dtype, device=log_probs.device)
    tau_neg = torch.as_tensor(tau_neg, dtype=log_probs.dtype, device=log_probs.device)
    tau = torch.where(advantages > 0, tau_pos, tau_neg)  # [B, T]
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    per_token = -gate * advantages
    with torch.no_grad():
        metrics = {"ppo_kl": masked_mean(-log_ratio, mask)}
    return per_token, metrics


@register_policy_loss("gpg")
def gpg(log_probs, old_log_probs, advantages, mask):
    """L = −A·log π (no ratio, no clip).

    GPG, "Group Policy Gradient" (Chu et al. 2025, arXiv 2504.02546; AMAP-ML/GPG): the plain REINFORCE
    objective on group-relative advantages. Exactly on-policy by construction (``old_log_probs`` unused).

    Returns:
        per-token loss [B, T]; no metrics.
    """
    return -log_probs * advantages, {}


@register_policy_loss("cispo")
def cispo(log_probs, old_log_probs, advantages, mask, *, epsilon_low=0.2, epsilon_high=0.2):
    """L = −sg(clip(r, 1 − ε_low, 1 + ε_high))·A·log π.

    CISPO (MiniMax-M1, arXiv 2506.13585): the importance weight is clipped and detached, so every token keeps
    a gradient (−w·A·∇log π) however far r moves. lr clamped to ±20 (verl). verl's bounds 1 ± ε (defaults
    0.2 / 0.2) differ from TRL's ``loss_type="cispo"``, which clamps r at ``epsilon_high`` itself; the
    paper sets no lower bound (a large ε_low) and tunes ε_high.

    Returns:
        per-token loss [B, T]; metrics ``clip_frac`` (share of tokens whose weight was clipped), ``ppo_kl``.
    """
    log_ratio = torch.clamp(log_probs - old_log_probs, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)  # [B, T]
    ratio = torch.exp(log_ratio)
    weight = clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -weight.detach() * advantages * log_probs
    with torch.no_grad():
        metrics = {"clip_frac": masked_mean((ratio != weight).to(mask.dtype), mask),
                   "ppo_kl": masked_mean(-log_ratio, mask)}
    return per_token, metrics


@register_policy_loss("geo_mean")
def geo_mean(log_probs, old_log_probs, advantages, mask, *, epsilon_low=0.2, epsilon_high=0.2):
    """L_i = −Ā_i·exp(Σ_t m_it·k_it / (n_i + 1e-8)), k_it = sgn(A)·min(sgn(A)·lr, sgn(A)·clip(lr, −ε_low, ε_high)).

    GMPO, geometric-mean policy optimization (Zhao et al. 2025, arXiv 2507.20673): the geometric mean of the
    token ratios, each clipped in log space toward the pessimistic side for the sign of A; Ā_i = Σ_t m·A /
    (n_i + 1e-8). Per-sequence: L_i is returned on each of the sequence's tokens, so ``loss_type="grpo"``
    (token mean per sequence, then mean over sequences) gives the paper's mean over sequences. The paper
    clips at (e^−0.4, e^0.4), i.e. ε_low = ε_high = 0.4; the trainer passes the config's ε.

    Returns:
        per-token loss [B, T]; metrics ``clip_frac`` (clipped tokens with A > 0), ``clip_frac_lower``
        (clipped tokens with A < 0), ``ppo_kl``.
    """
    log_ratio = log_probs - old_log_probs  # [B, T]
    sign = torch.sign(advantages)
    clipped = clamp(log_ratio, -epsilon_low, epsilon_high)
    pessimistic = sign * torch.min(sign * log_ratio, sign * clipped)  # [B, T]
    lengths = mask.sum(-1)  # [B]
    ratio = torch.exp((pessimistic * mask).sum(-1) / (lengths + 1e-8))  # [B]
    sequence_advantage = (advantages * mask).sum(-1) / (lengths + 1e-8)  # [B]
    per_token = (-sequence_advantage * ratio).unsqueeze(-1).expand_as(log_probs)  # [B, T]
    with torch.no_grad():
        was_clipped = log_ratio != clipped
        metrics = {"clip_frac": masked_mean((was_clipped & (advantages > 0)).to(mask.dtype), mask),
                   "clip_frac_lower": masked_mean((was_clipped & (advantages < 0)).to(mask.dtype), mask),
                   "ppo_kl": masked_mean(-log_ratio, mask)}
    return per_token, metrics
