"""A pure-torch stand-in for TRL's log-prob kernel where the installed TRL has no CPU path (trl 1.15).

TRL computes per-token log-probs through ``add_fused_lm_head``, whose inner kernel
(``trl.trainer.utils._ChunkedLogProbFunction``) is Triton-only in trl 1.15: on a machine without a GPU
it fails ("0 active drivers") or is missing; trl 1.16 folds its tiles with torch ops there itself.
:func:`use_torch_logprob_kernel` asks the installed kernel (:func:`trl_kernel_runs_here`) and swaps in
:class:`TorchChunkedLogProb` only when it cannot run; it is explicit and reversible (the returned
handle's ``revert()``), and is used by the demo and tests on CPU. On a CUDA machine nothing needs it.
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
    """Handle returned by :func:`use_torch_logprob_kernel`; ``revert()`` restores TRL's kernel.

    ``active`` is False when nothing was swapped (TRL's own kernel runs here).
    """

    def __init__(self, previous, active: bool = True):
        self._previous = previous
        self.active = active

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


def trl_kernel_runs_here(device: str = "cpu") -> bool:
    """Whether the installed TRL's own ``_ChunkedLogProbFunction`` runs on ``device``, asked by running it.

    One call on a 2-token, 3-word problem; True when it returns the exact log-softmax values. trl 1.15 on
    a CPU: False (its Triton kernel finds no driver, or Triton is absent); trl 1.16: True (torch path).
    """
    import trl.trainer.utils as trl_utils

    kernel = trl_utils._ChunkedLogProbFunction
    if kernel is None or kernel is TorchChunkedLogProb:
        return False
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 4, generator=generator), torch.randn(3, 4, generator=generator)
    targets = torch.tensor([0, 2])
    try:
        log_probs = kernel.apply(hidden.to(device), weight.to(device), None, targets.to(device), 1.0, 3)[0]
    except Exception:  # noqa: BLE001  (the answer is "no": Triton without a driver raises RuntimeError, others vary)
        return False
    expected = torch.log_softmax(hidden @ weight.t(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return bool(torch.allclose(log_probs.float().cpu(), expected, atol=1e-5))


def use_torch_logprob_kernel() -> KernelSwap:
    """Make TRL's fused LM head compute log-probs with :class:`TorchChunkedLogProb` where TRL's own kernel
    cannot run on a CPU (:func:`trl_kernel_runs_here`); otherwise leave TRL's kernel (an inactive handle)."""
    import trl.trainer.utils as trl_utils

    previous = trl_utils._ChunkedLogProbFunction
    if trl_kernel_runs_here("cpu"):
        return KernelSwap(previous, active=False)
    trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb
    return KernelSwap(previous)


def triton_kernel_usable() -> bool:
    """Whether TRL's Triton kernel can run here (it needs a CUDA/XPU device)."""
    import trl.trainer.utils as trl_utils

    return trl_utils._ChunkedLogProbFunction not in (None, TorchChunkedLogProb) and torch.cuda.is_available()
