"""Which kernel computes entropies in Unsloth's chunked loss: grpo-custom's one-pass kernel where the installed
Unsloth's own log-prob path keeps float32 chunk logits (so keeping float32 log-probs costs it no memory), Unsloth's
own entropy kernel elsewhere: where Unsloth offloads, where its scorer keeps no logits (fused-linear, unsloth_zoo
>= 2026.10.9) and where the LM head runs in 16 bits (``entropy_kernel``; the rule is :func:`keeps_log_probs`)."""
from __future__ import annotations

import contextvars
import inspect
import sys
from dataclasses import dataclass

import torch

from grpo_custom.unsloth.decisions import (SmallBatchRule, fused_linear_holds_all_rows, scorer_keeps_logits,
                                           small_batch_rule)
from grpo_custom.unsloth.entropy_kernel import (LogitTransform, chunked_logps_and_entropies,
                                                fp32_lm_head_from_environment)

_entropy_plan: contextvars.ContextVar["EntropyKernelPlan | None"] = contextvars.ContextVar("grpo_custom_entropy_plan",
                                                                                          default=None)
_small_batch_rules: dict = {}  # generated module name -> SmallBatchRule read from its grpo_accumulated_loss


@dataclass(frozen=True)
class EntropyKernelPlan:
    """What one ``grpo_accumulated_loss`` call tells the entropy log-softmax: the chosen kernel and the batch shape.

    Args:
        mode: ``"auto"``, ``"keep_log_probs"`` or ``"recompute"`` (the config's ``entropy_kernel``).
        total_rows: rows (completions) in this loss call.
        multiplier: Unsloth's log-softmax chunks per row (``unsloth_logit_chunk_multiplier`` or max(4, L // 4096)).
        scorer_keeps_logits: the installed Unsloth's answer (:func:`grpo_custom.unsloth.decisions.scorer_keeps_logits`).
        small_batch: Unsloth's padded-loop keep-or-offload bounds, read from its source.
    """

    mode: str
    total_rows: int
    multiplier: int
    scorer_keeps_logits: bool
    small_batch: SmallBatchRule


def keeps_log_probs(plan: EntropyKernelPlan, rows: int, width: int, chunks: int,
                    logits_dtype: torch.dtype = torch.float32, fused_holds_all_rows: bool = False) -> bool:
    """Whether an entropy call of ``rows`` × ``width`` tokens split in ``chunks`` keeps float32 log-probs
    (grpo-custom's one-pass kernel) rather than running Unsloth's own entropy kernel.

    The rule of ``auto`` is memory parity, measured by ``benchmarks/bench_loss.py`` side by side: keep float32
    log-probs only where Unsloth's own log-prob path (without entropy) holds float32 logits of the same tokens
    anyway, so the entropy costs no memory Unsloth's loss does not already take:

    - the LM head runs in float32 (``logits_dtype``, from :func:`head_matmul_dtype`). Beside 16-bit logits the
      float32 log-probs double the memory: on an H200 at B=8, T=1024, V=151,936 in bf16 the one-pass kernel took
      2.01× base memory and 2.02× base time, Unsloth's recomputing kernel 0.07× and 1.41×
      (``benchmarks/results/gpu-h200-2026-11-30.md``); on CPU in float32 the one-pass kernel took 0.95× and 0.96×;
    - and either Unsloth's chunked scorer keeps its chunk logits for the backward (``plan.scorer_keeps_logits``,
      asked from ``grpo_scorer_keeps_logits()``): for the packed-sequence call (one row of all tokens,
      ``total_rows · multiplier`` chunks) and for the padded mini-batches its small-batch rule keeps (one
      mini-batch, or few and narrow ones: bounds read from its source); elsewhere it offloads or recomputes;
    - or, where its fused-linear kernel scores instead (unsloth_zoo ≥ 2026.10.9; it keeps no logits), that
      kernel takes all ``rows × width`` tokens in one row chunk (``fused_holds_all_rows``, from
      :func:`grpo_custom.unsloth.decisions.fused_linear_holds_all_rows`) and so holds all their logits at
      once: measured on CPU at 384 tokens, V=151,936, the one-pass kernel took 0.16× base memory and 0.45× base
      time, Unsloth's fused-linear entropy 1.14× and 1.72× (``benchmarks/RESULTS_loss_cpu.md``).

    ``keep_log_probs`` and ``recompute`` force the choice.
    """
    if plan.mode == "keep_log_probs":
        return True
    if plan.mode == "recompute" or logits_dtype != torch.float32:
        return False
    if not plan.scorer_keeps_logits:
        return fused_holds_all_rows
    packed_call = rows == 1 and plan.total_rows > 1 and chunks == plan.total_rows * plan.multiplier
    if packed_call:
        return True
    return plan.small_batch.keeps(width, -(-plan.total_rows // max(rows, 1)))


def head_matmul_dtype(lm_head: torch.Tensor, fp32_lm_head: bool) -> torch.dtype:
    """The dtype the LM-head matmul by ``lm_head`` [V, H] runs in, so the dtype of its logits:
    float32 with ``fp32_lm_head``, else the autocast dtype where autocast is on for the head's device, else
    ``lm_head``'s dtype (both kernels cast the hidden states to it)."""
    if fp32_lm_head:
        return torch.float32
    device_type = lm_head.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return lm_head.dtype


def entropy_plan_for(trainer, input_ids: torch.Tensor) -> EntropyKernelPlan:
    """The :class:`EntropyKernelPlan` of one loss call on ``input_ids`` [rows, L], from the trainer's config."""
    args = trainer.args
    mode = getattr(args, "entropy_kernel", "auto")
    multiplier = getattr(args, "unsloth_logit_chunk_multiplier", None)
    if multiplier is None:
        multiplier = max(4, int(input_ids.shape[1]) // 4096)
    module = type(trainer).__module__
    if module not in _small_batch_rules:
        _small_batch_rules[module] = small_batch_rule(sys.modules[module].grpo_accumulated_loss)
    return EntropyKernelPlan(mode=mode, total_rows=int(input_ids.shape[0]), multiplier=int(multiplier),
                             scorer_keeps_logits=scorer_keeps_logits() if mode == "auto" else True,
                             small_batch=_small_batch_rules[module])


def make_entropy_log_softmax(original):
    """Unsloth's ``chunked_hidden_states_selective_log_softmax_recompute`` whose ``return_entropy=True`` calls,
    inside a patched trainer's loss, run grpo-custom's one-pass kernel where :func:`keeps_log_probs` says so.

    Calls without entropy, calls outside a loss (no plan) and calls the plan sends to ``recompute`` run
    Unsloth's own function unchanged.
    """
    signature = inspect.signature(original)

    def chunked_hidden_states_selective_log_softmax_recompute(*args, **kwargs):
        plan = _entropy_plan.get()
        if plan is None:
            return original(*args, **kwargs)
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        options = call.arguments
        if not options.get("return_entropy", False):
            return original(*args, **kwargs)
        hidden, index = options["hidden_states"], options["index"]
        rows, width = (1, hidden.shape[0]) if hidden.dim() == 2 else (hidden.shape[0], hidden.shape[1])
        fp32_lm_head = options.get("fp32_lm_head")
        if fp32_lm_head is None:
            fp32_lm_head = fp32_lm_head_from_environment()
        lm_head = options["lm_head"]
        logits_dtype = head_matmul_dtype(lm_head, bool(fp32_lm_head))
        fused_all = (not plan.scorer_keeps_logits and plan.mode == "auto"
                     and fused_linear_holds_all_rows(rows * width, lm_head.shape[1], lm_head.shape[0], lm_head.device))
        if not keeps_log_probs(plan, rows, width, int(options["chunks"]), logits_dtype, fused_all):
            return original(*args, **kwargs)
        transform = LogitTransform(float(options["logit_scale_multiply"]), float(options["logit_scale_divide"]),
                                   float(options["logit_softcapping"]), float(options["temperature"]))
        return chunked_logps_and_entropies(
            hidden, options["lm_head"], index, int(options["chunks"]), transform,
            lm_head_bias=options.get("lm_head_bias"), max_rows_per_chunk=options.get("max_rows_per_chunk"),
            fp32_lm_head=options.get("fp32_lm_head"),
        )

    chunked_hidden_states_selective_log_softmax_recompute.grpo_custom_original = original
    return chunked_hidden_states_selective_log_softmax_recompute
