"""Per-token log-probs and entropies from hidden states, chunk by chunk, in one LM-head pass.

For rows of hidden states h [N, H], an output head W [V, H] (optional bias b) and sampled tokens
y [N], each chunk of rows computes its logits z = transform(h Wᵀ + b) and, from
log p = log_softmax(z) over the vocabulary,

    log p(y)  (the sampled token's log-prob)       H = −Σ_v p_v log p_v  (the entropy),

and keeps the chunk's float32 log p for the backward. ``transform`` is Unsloth's: logit scale
multiply / divide and tanh soft-capping in the matmul dtype, then float32 and the temperature.

Backward, with upstream gradients g_ℓ (of log p(y)) and g_H (of H), per row:

    ∂L/∂z = g_ℓ (onehot(y) − p) − g_H p (log p + H)      (∂H/∂z_v = −p_v (log p_v + H))

then the chain through the transform and ∂L/∂h = (∂L/∂z) W, ∂L/∂W = (∂L/∂z)ᵀ h, ∂L/∂b = Σ_rows ∂L/∂z.
Each chunk's kept log-probs are released as soon as its backward has run.

Why: Unsloth's own entropy path (``chunked_hidden_states_selective_log_softmax_recompute`` with
``return_entropy=True``) keeps only per-row statistics and recomputes every chunk's logits in the
backward: one more [N, H]·[H, V] matmul, the dominant cost (benchmarks/RESULTS_loss_cpu.md: 1.6-1.75×
the loss without entropy). Unsloth's plain log-prob path already keeps each chunk's float32 logits
for its backward, so keeping float32 log-probs instead costs the same memory and no extra matmul.
When Unsloth's log-prob path would not keep them (it offloads and recomputes for long or many
mini-batches), :mod:`grpo_custom.unsloth.loss_terms` sends entropy to Unsloth's recomputing kernel instead.

References: the entropy gradient −p (log p + H) is the standard softmax-entropy derivative; the
chunked hidden-state log-softmax is Unsloth's memory layout (unsloth_zoo ``rl_replacements``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from grpo_custom.algorithms.sharding import full_tensor


@dataclass(frozen=True)
class LogitTransform:
    """Unsloth's logit post-processing, in order: ×multiply, ÷divide, cap·tanh(z/cap) (matmul dtype), float32, ÷temperature.

    A value of 0.0 switches the scale/softcap steps off, as in Unsloth.
    """

    scale_multiply: float = 0.0
    scale_divide: float = 0.0
    softcapping: float = 0.0
    temperature: float = 1.0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """float32 z from the head's raw logits [n, V]."""
        if self.scale_multiply != 0.0:
            logits = logits * self.scale_multiply
        if self.scale_divide != 0.0:
            logits = logits / self.scale_divide
        if self.softcapping != 0.0:
            logits = self.softcapping * torch.tanh(logits / self.softcapping)
        z = logits.to(torch.float32)
        if self.temperature != 1.0:
            z = z / self.temperature
        return z

    def backward_(self, grad_z: torch.Tensor, log_p: torch.Tensor, logsumexp: torch.Tensor) -> torch.Tensor:
        """∂L/∂(raw logits) from ∂L/∂z, in place on ``grad_z``.

        The soft-cap derivative 1 − tanh² is taken from the capped value c·tanh, recovered as
        (log p + logsumexp)·temperature, so no logits are kept for it.
        """
        if self.temperature != 1.0:
            grad_z.div_(self.temperature)
        if self.softcapping != 0.0:
            tanh = (log_p + logsumexp.unsqueeze(-1)).mul_(self.temperature / self.softcapping)
            grad_z.mul_(tanh.square_().neg_().add_(1.0))
            del tanh
        if self.scale_divide != 0.0:
            grad_z.div_(self.scale_divide)
        if self.scale_multiply != 0.0:
            grad_z.mul_(self.scale_multiply)
        return grad_z


def _head_logits(hidden: torch.Tensor, lm_head: torch.Tensor, lm_head_bias: torch.Tensor | None) -> torch.Tensor:
    hidden = hidden.to(device=lm_head.device, dtype=lm_head.dtype)
    if lm_head_bias is None:
        return hidden @ lm_head.t()
    return torch.nn.functional.linear(hidden, lm_head, lm_head_bias)


class ChunkedLogProbsAndEntropy(torch.autograd.Function):
    """(log p(y), H) per row of ``hidden`` [N, H], chunk by chunk; see the module docstring for the math."""

    @staticmethod
    def forward(ctx, hidden, lm_head, lm_head_bias, index, bounds, transform: LogitTransform):
        logps = torch.empty(hidden.shape[0], dtype=torch.float32, device=lm_head.device)
        entropies = torch.empty_like(logps)
        logsumexps = torch.empty_like(logps)
        kept_log_probs = []
        matmul_dtype = None
        device_type = lm_head.device.type
        for start, end in zip(bounds[:-1], bounds[1:]):
            logits = _head_logits(hidden[start:end], lm_head, lm_head_bias)  # the caller's autocast applies here only
            matmul_dtype = logits.dtype
            with torch.autocast(device_type=device_type, enabled=False):  # autocast would run vecdot in 16 bits
                z = transform.apply(logits)
                del logits
                chunk_index = index[start:end].to(lm_head.device).unsqueeze(-1)
                log_p = torch.log_softmax(z, dim=-1)
                logps[start:end] = log_p.gather(-1, chunk_index).squeeze(-1)
                logsumexps[start:end] = z.gather(-1, chunk_index).squeeze(-1) - logps[start:end]
                del z
                p = log_p.exp()
                entropies[start:end] = -torch.linalg.vecdot(p, log_p)
                del p
            kept_log_probs.append(log_p)
        ctx.save_for_backward(hidden, lm_head, lm_head_bias, index, logsumexps, entropies)
        ctx.kept_log_probs = kept_log_probs
        ctx.bounds = bounds
        ctx.transform = transform
        ctx.matmul_dtype = matmul_dtype
        return logps.to(hidden.device), entropies.to(hidden.device)

    @staticmethod
    def backward(ctx, grad_logps, grad_entropies):
        # Explicit dtypes throughout: the matmuls run in the forward's matmul dtype, the rest in float32.
        with torch.autocast(device_type=ctx.saved_tensors[1].device.type, enabled=False):
            return ChunkedLogProbsAndEntropy._backward(ctx, grad_logps, grad_entropies)

    @staticmethod
    def _backward(ctx, grad_logps, grad_entropies):
        hidden, lm_head, lm_head_bias, index, logsumexps, entropies = ctx.saved_tensors
        need_hidden, need_head, need_bias = ctx.needs_input_grad[:3]
        kept_log_probs, ctx.kept_log_probs = ctx.kept_log_probs, None
        if kept_log_probs is None:
            raise RuntimeError("ChunkedLogProbsAndEntropy: backward ran twice; its kept log-probs are already freed.")
        device = lm_head.device
        n_rows = hidden.shape[0]
        zeros = torch.zeros(n_rows, dtype=torch.float32, device=device)
        grad_logps = zeros if grad_logps is None else grad_logps.to(device=device, dtype=torch.float32)
        grad_entropies = zeros if grad_entropies is None else grad_entropies.to(device=device, dtype=torch.float32)
        matmul_dtype = ctx.matmul_dtype
        head = lm_head if lm_head.dtype == matmul_dtype else lm_head.to(matmul_dtype)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_head = torch.zeros(lm_head.shape, device=device, dtype=torch.float32) if need_head else None
        grad_bias = torch.zeros(lm_head_bias.shape, dtype=torch.float32, device=device) if need_bias else None
        for chunk, (start, end) in enumerate(zip(ctx.bounds[:-1], ctx.bounds[1:])):
            log_p = kept_log_probs[chunk]
            kept_log_probs[chunk] = None
            g_logp, g_entropy = grad_logps[start:end].unsqueeze(-1), grad_entropies[start:end].unsqueeze(-1)
            # ∂L/∂z = onehot·g_ℓ − p·(g_ℓ + g_H·H + g_H·log p)
            scale = torch.addcmul(g_logp + g_entropy * entropies[start:end].unsqueeze(-1), log_p, g_entropy)
            grad_z = log_p.exp().mul_(scale.neg_())
            del scale
            grad_z.scatter_add_(-1, index[start:end].to(device).unsqueeze(-1), g_logp)
            ctx.transform.backward_(grad_z, log_p, logsumexps[start:end])
            del log_p
            grad_z = grad_z.to(matmul_dtype)
            if need_hidden:
                grad_hidden[start:end] = _mm_float32_out(grad_z, head).to(device=hidden.device, dtype=hidden.dtype)
            if need_head:
                rows = hidden[start:end].to(device=device, dtype=matmul_dtype)
                grad_head.add_(_mm_float32_out(grad_z.t(), rows))
            if need_bias:
                grad_bias.add_(grad_z.to(torch.float32).sum(0))
            del grad_z
        if need_head:
            grad_head = grad_head.to(lm_head.dtype)
        if need_bias:
            grad_bias = grad_bias.to(lm_head_bias.dtype)
        return grad_hidden, grad_head, grad_bias, None, None, None


def _mm_float32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with a float32 result: 16-bit inputs' products are summed and returned in float32."""
    if a.dtype == torch.float32:
        return a @ b
    if a.device.type == "cuda":
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    return a.float() @ b.float()


def chunk_bounds(n_rows: int, chunks: int, max_rows_per_chunk: int = 0) -> tuple[int, ...]:
    """Row boundaries of ``chunks`` near-equal chunks (more if ``max_rows_per_chunk`` caps them), as Unsloth splits rows."""
    if max_rows_per_chunk > 0:
        chunks = max(chunks, -(-n_rows // max_rows_per_chunk))
    chunks = max(1, min(int(chunks), n_rows))
    return tuple((i * n_rows) // chunks for i in range(chunks + 1))


def fp32_lm_head_from_environment() -> bool:
    """Unsloth's ``UNSLOTH_VLLM_FP32_LM_HEAD`` switch (project the LM head in float32), read as Unsloth reads it."""
    return _env_flag("UNSLOTH_VLLM_FP32_LM_HEAD")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "on", "yes")


def _env_int(name: str) -> int:
    value = os.environ.get(name, "0").strip()
    return int(value) if value.isdigit() else 0


def chunked_logps_and_entropies(
    hidden_states: torch.Tensor,
    lm_head: torch.Tensor,
    index: torch.Tensor,
    chunks: int = 4,
    transform: LogitTransform = LogitTransform(),
    *,
    lm_head_bias: torch.Tensor | None = None,
    max_rows_per_chunk: int | None = None,
    fp32_lm_head: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``index`` and entropies, both [B, T], from ``hidden_states`` [B, T, H] and ``lm_head`` [V, H].

    Args:
        chunks: row chunks over the B·T rows (``max_rows_per_chunk`` > 0 caps a chunk's rows; None reads
            ``UNSLOTH_GRPO_MAX_ROWS_PER_CHUNK``, as Unsloth does).
        transform: the logit post-processing (scale, soft-cap, temperature).
        lm_head_bias: optional head bias [V].
        fp32_lm_head: project in float32 outside autocast (None reads ``UNSLOTH_VLLM_FP32_LM_HEAD``, as Unsloth does).

    Gradients flow to ``hidden_states``, ``lm_head`` and ``lm_head_bias`` where they require them. A head
    sharded by FSDP2 (DTensor) is all-gathered first (:func:`grpo_custom.algorithms.sharding.full_tensor`); a
    ZeRO-3 head must come gathered (Unsloth's loss gathers it), a released one raises ValueError.
    """
    lm_head = full_tensor(lm_head, name="chunked_logps_and_entropies: lm_head")
    if lm_head_bias is not None:
        lm_head_bias = full_tensor(lm_head_bias, name="chunked_logps_and_entropies: lm_head_bias")
    if hidden_states.shape[-1] != lm_head.shape[-1]:
        raise ValueError(f"chunked_logps_and_entropies: hidden size {hidden_states.shape[-1]} does not match the "
                         f"output head's {tuple(lm_head.shape)}.")
    if index.shape != hidden_states.shape[:-1]:
        raise ValueError(f"chunked_logps_and_entropies: token ids {tuple(index.shape)} do not match hidden states "
                         f"{tuple(hidden_states.shape)}.")
    if max_rows_per_chunk is None:
        max_rows_per_chunk = _env_int("UNSLOTH_GRPO_MAX_ROWS_PER_CHUNK")
    if fp32_lm_head is None:
        fp32_lm_head = fp32_lm_head_from_environment()
    flat_hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    flat_index = index.reshape(-1)
    bounds = chunk_bounds(flat_hidden.shape[0], chunks, max_rows_per_chunk)
    if fp32_lm_head:
        lm_head = lm_head.to(torch.float32)
        lm_head_bias = None if lm_head_bias is None else lm_head_bias.to(torch.float32)
        with torch.autocast(device_type=lm_head.device.type, enabled=False):
            logps, entropies = ChunkedLogProbsAndEntropy.apply(flat_hidden, lm_head, lm_head_bias, flat_index, bounds,
                                                               transform)
    else:
        logps, entropies = ChunkedLogProbsAndEntropy.apply(flat_hidden, lm_head, lm_head_bias, flat_index, bounds,
                                                           transform)
    return logps.reshape(index.shape), entropies.reshape(index.shape)
