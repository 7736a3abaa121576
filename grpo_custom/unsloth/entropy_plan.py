"""Which kernel computes entropies in Unsloth's chunked loss: grpo-custom's one-pass kernel where Unsloth's
own log-prob path keeps its float32 chunk logits, Unsloth's recomputing kernel elsewhere (``entropy_kernel``)."""
from __future__ import annotations

import contextvars
import inspect
from dataclasses import dataclass

import torch

from grpo_custom.unsloth.entropy_kernel import LogitTransform, chunked_logps_and_entropies

_entropy_plan: contextvars.ContextVar["EntropyKernelPlan | None"] = contextvars.ContextVar("grpo_custom_entropy_plan",
                                                                                          default=None)
UNSLOTH_KEEPS_LOGITS_MAX_WIDTH = 1024  # unsloth_zoo 2026.10.7 efficient_log_softmax: keep chunk logits up to this
UNSLOTH_KEEPS_LOGITS_MAX_MINIBATCHES = 8  # ... and up to this many mini-batches (or exactly one)


@dataclass(frozen=True)
class EntropyKernelPlan:
    """What one ``grpo_accumulated_loss`` call tells the entropy log-softmax: the chosen kernel and the batch shape.

    Args:
        mode: ``"auto"``, ``"keep_log_probs"`` or ``"recompute"`` (the config's ``entropy_kernel``).
        total_rows: rows (completions) in this loss call.
        multiplier: Unsloth's log-softmax chunks per row (``unsloth_logit_chunk_multiplier`` or max(4, L // 4096)).
    """

    mode: str
    total_rows: int
    multiplier: int


def keeps_log_probs(plan: EntropyKernelPlan, rows: int, width: int, chunks: int) -> bool:
    """Whether an entropy call of ``rows`` × ``width`` tokens split in ``chunks`` keeps float32 log-probs.

    ``auto`` keeps them exactly where Unsloth's own log-prob path (without entropy) keeps its float32
    chunk logits until the backward, so the entropy costs no more memory than Unsloth's loss does: the
    packed-sequence call (one row of all tokens, ``total_rows · multiplier`` chunks), and padded
    mini-batches when there is one, or when there are at most 8 of width ≤ 1024. Elsewhere Unsloth
    offloads and recomputes, and so does the entropy (Unsloth's recomputing kernel).
    """
    if plan.mode == "keep_log_probs":
        return True
    if plan.mode == "recompute":
        return False
    packed_call = rows == 1 and plan.total_rows > 1 and chunks == plan.total_rows * plan.multiplier
    if packed_call:
        return True
    minibatches = -(-plan.total_rows // max(rows, 1))
    return minibatches == 1 or (width <= UNSLOTH_KEEPS_LOGITS_MAX_WIDTH
                                and minibatches <= UNSLOTH_KEEPS_LOGITS_MAX_MINIBATCHES)


def entropy_plan_for(trainer, input_ids: torch.Tensor) -> EntropyKernelPlan:
    """The :class:`EntropyKernelPlan` of one loss call on ``input_ids`` [rows, L], from the trainer's config."""
    args = trainer.args
    mode = getattr(args, "entropy_kernel", "auto")
    multiplier = getattr(args, "unsloth_logit_chunk_multiplier", None)
    if multiplier is None:
        multiplier = max(4, int(input_ids.shape[1]) // 4096)
    return EntropyKernelPlan(mode=mode, total_rows=int(input_ids.shape[0]), multiplier=int(multiplier))


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
