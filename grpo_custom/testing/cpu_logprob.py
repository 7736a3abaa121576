"""A pure-torch stand-in for TRL 1.15's Triton log-prob kernel, so GRPO runs on a CPU.

TRL 1.15 computes per-token log-probs through ``add_fused_lm_head``, whose inner kernel
(``trl.trainer.utils._ChunkedLogProbFunction``) is Triton-only: on a machine without a GPU it
fails ("0 active drivers") or is missing. :func:`use_torch_logprob_kernel` swaps in
:class:`TorchChunkedLogProb`, which computes the same outputs with plain torch ops (autograd does
the backward). It is explicit and reversible (the returned handle's ``revert()``), and is used by
the demo and tests on CPU. On a CUDA machine nothing needs it.
"""
from __future__ import annotations

import torch


class TorchChunkedLogProb:
    """Same call signature and outputs as TRL's ``ChunkedLogProbFunction.apply``, in plain torch.

    With z = ((h·Wᵀ + b) · logit_scale), softcapped as c·tanh(z/c) when ``softcap`` is set, then
    divided by the temperature: log_prob = z[target] − logsumexp(z); entropy = logsumexp(z) −
    Σ softmax(z)·z; log_sum_sq_probs = log Σ softmax(z)²; mean_logits = mean(z); is_top1 = the
    target is the first argmax. Tokens are processed in chunks of ``chunk_size`` rows.
    """

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("entropy",)):
        """Per-token ``(log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1)`` for ``hidden`` [N, H]."""
        pieces = []
        for start in range(0, hidden.shape[0], max(int(chunk_size), 1)):
            h = hidden[start:start + chunk_size]
            z = h.float() @ weight.float().t()  # [n, V]
            if bias is not None:
                z = z + bias.float()
            z = z * logit_scale
            if final_logit_softcapping is not None:
                z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
            z = z / temperature
            pieces.append(_token_statistics(z, targets[start:start + chunk_size], outputs))
        if not pieces:
            empty = hidden.new_zeros((0,), dtype=torch.float32)
            return empty, *(empty if name in outputs else None for name in _OPTIONAL)
        return tuple(None if parts[0] is None else torch.cat(parts) for parts in zip(*pieces))


_OPTIONAL = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _token_statistics(z: torch.Tensor, targets: torch.Tensor, outputs) -> tuple:
    log_z = torch.logsumexp(z, dim=-1)  # [n]
    log_probs = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
    probs = None
    entropy = log_sum_sq = mean_logits = is_top1 = None
    if "entropy" in outputs or "log_sum_sq_probs" in outputs:
        probs = torch.softmax(z, dim=-1)  # [n, V]
    if "entropy" in outputs:
        entropy = log_z - (probs * z).sum(-1)
    if "log_sum_sq_probs" in outputs:
        log_sum_sq = torch.log((probs.detach() ** 2).sum(-1))
    if "mean_logits" in outputs:
        mean_logits = z.detach().mean(-1)
    if "is_top1" in outputs:
        is_top1 = z.detach().argmax(-1) == targets
    return log_probs, entropy, log_sum_sq, mean_logits, is_top1


class KernelSwap:
    """Handle returned by :func:`use_torch_logprob_kernel`; ``revert()`` restores TRL's kernel."""

    def __init__(self, previous):
        self._previous = previous
        self.active = True

    def revert(self) -> None:
        """Put TRL's own kernel back."""
        import trl.trainer.utils as trl_utils

        if self.active:
            trl_utils._ChunkedLogProbFunction = self._previous
            self.active = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.revert()


def use_torch_logprob_kernel() -> KernelSwap:
    """Make TRL's fused LM head compute log-probs with :class:`TorchChunkedLogProb` (needed on CPU)."""
    import trl.trainer.utils as trl_utils

    previous = trl_utils._ChunkedLogProbFunction
    trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb
    return KernelSwap(previous)


def triton_kernel_usable() -> bool:
    """Whether TRL's Triton kernel can run here (it needs a CUDA/XPU device)."""
    import trl.trainer.utils as trl_utils

    return trl_utils._ChunkedLogProbFunction not in (None, TorchChunkedLogProb) and torch.cuda.is_available()
