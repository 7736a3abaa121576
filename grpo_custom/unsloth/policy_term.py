"""grpo-custom's policy loss inside Unsloth's fast GRPO loss (an eager term beside ``UnslothEfficientGRPO``).

Unsloth computes its PPO-clip term inside ``grpo_compute_loss``; with a policy loss other than the stock one,
the loss-term wrapper passes zero advantages there (Unsloth's KL, masks and metrics stay) and this module adds
Σ w·L_policy over the full ``[B, T]`` log-probs, weighted like Unsloth aggregates its own loss (the weights
asked from Unsloth: :mod:`grpo_custom.unsloth.decisions`).
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

import torch

POLICY_KEY = "grpo_custom_policy"  # loss kwarg: True → grpo_compute_loss gets zero advantages
_policy_step: contextvars.ContextVar["PolicyStep | None"] = contextvars.ContextVar("grpo_custom_policy", default=None)


@dataclass
class PolicyStep:
    """One loss call's policy loss: the spec, the optimizer step it runs at, and its metrics (summed, counted)."""

    spec: object  # PolicyLossSpec
    step: int
    metrics: dict = field(default_factory=dict)

    def record(self, metrics: dict) -> None:
        for key, value in metrics.items():
            total, count = self.metrics.get(key, (0.0, 0))
            self.metrics[key] = (total + float(value), count + 1)


def policy_loss_value(policy: PolicyStep, new, old, sampling, mask, advantages, loss_kwargs, *, weights, is_ratio=None):
    """Σ_t w_t·m_t·L_t (a scalar, differentiable in ``new``) and the loss's metrics.

    Masked positions of the log-probs are set to 0 first (as Unsloth does); ``old`` None means on-policy
    (``new.detach()``). L is multiplied, as Unsloth multiplies its policy term, by TRL's off-policy mask
    (``off_policy_mask_threshold``), the high-entropy mask (``top_entropy_quantile``) and the vLLM
    importance-sampling ratio (``is_ratio``, Unsloth's own ``flat_is_ratio``), then weighted by ``weights``.

    Args:
        new, old, sampling: [B, T] log-probs in Unsloth's loss window (``old``/``sampling`` may be None).
        mask: [B, T] completion mask; advantages: [B] or [B, T].
        weights: [B, T] token weights with Σ w·x == Unsloth's aggregation of x for this call
            (:func:`grpo_custom.unsloth.decisions.chunked_token_weights`).
    """
    keep = mask.to(torch.bool)
    new = torch.where(keep, new, 0.0)
    old = new.detach() if old is None else torch.where(keep, old, 0.0)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    token_advantages = advantages.expand_as(new).to(new.dtype)
    mask_f = mask.to(new.dtype)
    per_token, metrics = policy.spec(new, old, token_advantages, mask_f, step=policy.step)
    threshold = loss_kwargs.get("off_policy_mask_threshold")
    if threshold is not None:
        mismatch = sampling if sampling is not None else old
        per_token = per_token * loss_kwargs["get_off_policy_mask"](
            advantages=advantages, per_token_logps=new, sampling_per_token_logps=mismatch, mask=mask,
            off_policy_threshold=threshold)
    if loss_kwargs.get("entropy_mask") is not None:
        per_token = per_token * loss_kwargs["entropy_mask"]
    if is_ratio is not None and is_ratio.numel() > 0:
        per_token = per_token * is_ratio
    return (per_token.to(torch.float32) * weights).sum(), metrics


class PolicyTerm(torch.autograd.Function):
    """The policy term's value, with its gradient w.r.t. the log-probs taken in the forward (eagerly).

    The backward returns that gradient times the mixed-precision scale and, like ``UnslothEfficientGRPO``,
    ignores ``grad_output`` unless DeepSpeed's ``upstream_scale`` is set: the two terms then receive the
    same treatment from the trainer's backward.
    """

    @staticmethod
    def forward(ctx, new_logps, compute, scaling, upstream_scale):
        with torch.enable_grad():
            leaf = new_logps.detach().requires_grad_(True)
            value = compute(leaf)
            (grad,) = torch.autograd.grad(value * scaling, leaf)
        ctx.save_for_backward(grad)
        ctx.upstream_scale = upstream_scale
        return value.detach()

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if ctx.upstream_scale is not None:
            grad = grad * (grad_output * ctx.upstream_scale)
        return grad, None, None, None
