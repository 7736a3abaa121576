"""Which kernel computes entropies in Unsloth's chunked loss: grpo-custom's one-pass kernel where the installed
Unsloth's own log-prob path keeps its float32 chunk logits, Unsloth's own entropy kernel elsewhere (``entropy_kernel``)."""
from __future__ import annotations

import contextvars
import inspect
import sys
from dataclasses import dataclass

import torch

from grpo_custom.unsloth.decisions import SmallBatchRule, scorer_keeps_logits, small_batch_rule
from grpo_custom.unsloth.entropy_kernel import LogitTransform, chunked_logps_and_entropies

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


def keeps_log_probs(plan: EntropyKernelPlan, rows: int, width: int, chunks: int) -> bool:
    """Whether an entropy call of ``rows`` × ``width`` tokens split in ``chunks`` keeps float32 log-probs.

    ``auto`` keeps them exactly where the installed Unsloth's own log-prob path (without entropy) keeps
    its float32 chunk logits until the backward, so the entropy costs no more memory than Unsloth's loss
    does (benchmarks/bench_loss.py measures both kernels side by side): only while Unsloth's scorer keeps
    logits at all (``grpo_scorer_keeps_logits()``; from unsloth_zoo 2026.10.9 its fused-linear kernel keeps
    none by default, and then Unsloth's own entropy kernel runs), and then for the packed-sequence call
    (one row of all tokens, ``total_rows · multiplier`` chunks) and for the padded mini-batches Unsloth's
    small-batch rule keeps (one mini-batch, or few and narrow ones: bounds read from its source).
    Elsewhere Unsloth offloads or recomputes, and so does the entropy (Unsloth's own kernel).
    """
    if plan.mode == "keep_log_probs":
        return True
    if plan.mode == "recompute" or not plan.scorer_keeps_logits:
        return False
    packed_call = rows == 1 and plan.total_rows > 1 and chunks == plan.total_rows * plan.multiplier
    if packed_call:
        return True
    return plan.small_batch.keeps(width, -(-plan.total_rows // max(rows, 1)))


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
        if not keeps_log_probs(plan, rows, width, int(options["chunks"])):
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
