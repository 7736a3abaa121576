"""What the installed Unsloth decides, asked from it: keep-or-offload of chunk logits, token weights, KL clamp order.

Nothing here restates an Unsloth rule: each answer comes from calling (or reading) the installed unsloth_zoo.
"""
from __future__ import annotations

import importlib
import inspect
import math
import re
from dataclasses import dataclass

import torch

# Unsloth's small-batch rule in grpo_accumulated_loss's efficient_log_softmax (every release 2026.10.7-.9):
#   if (index.shape[1] <= WIDTH and batch_size <= MINIBATCHES) or batch_size == 1: the chunked scorer (keeps logits)
_SMALL_BATCH_RULE = re.compile(r"index\.shape\[1\]\s*<=\s*(\d+)\s+and\s+batch_size\s*<=\s*(\d+)\)\s*or\s+batch_size\s*==\s*1")


class UnslothDecisionError(RuntimeError):
    """The installed Unsloth no longer has the code grpo-custom asks a decision from."""


@dataclass(frozen=True)
class SmallBatchRule:
    """Unsloth keeps chunk logits for a padded loss call of ``minibatches`` × ``width`` when this says so.

    Read from the installed ``grpo_accumulated_loss`` source (see :func:`small_batch_rule`).
    """

    max_width: int
    max_minibatches: int

    def keeps(self, width: int, minibatches: int) -> bool:
        """True where Unsloth's padded loop scores with its chunked (logit-keeping) path."""
        return minibatches == 1 or (width <= self.max_width and minibatches <= self.max_minibatches)


def small_batch_rule(accumulated_loss) -> SmallBatchRule:
    """The width / mini-batch bounds of Unsloth's keep-or-offload choice, read from ``accumulated_loss``'s source.

    Raises UnslothDecisionError unless the rule occurs exactly once (a changed Unsloth must be looked at).
    """
    source = inspect.getsource(getattr(accumulated_loss, "grpo_custom_original", accumulated_loss))
    found = _SMALL_BATCH_RULE.findall(source)
    if len(found) != 1:
        raise UnslothDecisionError(
            f"Unsloth's grpo_accumulated_loss holds its keep-or-offload rule '(index.shape[1] <= N and batch_size "
            f"<= M) or batch_size == 1' {len(found)} times (expected once): grpo-custom cannot tell where Unsloth "
            "keeps its chunk logits, which entropy_kernel='auto' follows.")
    width, minibatches = found[0]
    return SmallBatchRule(int(width), int(minibatches))


def scorer_keeps_logits() -> bool:
    """Whether Unsloth's log-prob scorer keeps each chunk's float32 logits for the backward.

    unsloth_zoo ≥ 2026.10.9 answers itself (``grpo_scorer_keeps_logits()``: False while its fused-linear
    kernel scores, which keeps none). Named branch ``PRE_FUSED_SCORER``: releases without that function
    have a single scorer, the chunked one, which keeps them.
    """
    import unsloth_zoo.rl_replacements as zoo

    decide = getattr(zoo, "grpo_scorer_keeps_logits", None)
    if decide is None:  # PRE_FUSED_SCORER (unsloth_zoo <= 2026.10.8)
        return True
    return bool(decide())


def fused_linear_holds_all_rows(n_rows: int, hidden_size: int, vocab_size: int, device: torch.device) -> bool:
    """Whether the installed fused-linear kernel scores ``n_rows`` tokens in one row chunk, holding float32
    logits [n_rows, V] at once (its ``fused_linear_rows`` answers; its row chunk has a floor of hundreds of rows).

    False where unsloth_zoo has no fused-linear kernel (<= 2026.10.8). Used by ``entropy_kernel="auto"``:
    grpo-custom's kernel keeps float32 log-probs [n_rows, V], so it costs no more where Unsloth's kernel holds all
    rows anyway (measured on CPU at 384 rows, V=151,936: 0.16× against 1.14× base memory, 0.45× against 1.72×
    base time; ``benchmarks/RESULTS_loss_cpu.md``).
    """
    try:
        fused_linear = importlib.import_module("unsloth_zoo.fused_losses.fused_linear")
    except ModuleNotFoundError as exc:  # PRE_FUSED_SCORER (unsloth_zoo <= 2026.10.8): no fused-linear kernel
        if exc.name == "unsloth_zoo.fused_losses.fused_linear":
            return False
        raise
    rows = fused_linear.fused_linear_rows(int(n_rows), int(hidden_size), int(vocab_size), 4, device)
    return int(rows) >= int(n_rows)


def token_weights(compute_loss, input_ids: torch.Tensor, mask: torch.Tensor, loss_kwargs: dict) -> torch.Tensor:
    """Per-token weights w [B, T] with Σ w·x == how ``compute_loss`` (Unsloth's grpo_compute_loss) aggregates x.

    Asked from Unsloth itself: its KL term enters its per-token loss as beta·k3(Δ), Δ = ref − new, and its
    aggregation (loss type, BNPO normaliser, accumulation, num_items_in_batch, sample weights) is linear in
    that per-token loss. With advantages 0 (no policy term), beta = 1, Δ = ln 2 (∂k3/∂ref = e^Δ − 1 = 1, no
    clamp active) and no bias correction, ∂loss/∂ref = w. Pure tensor code, so it also runs inside
    Unsloth's compiled chunk loss (nested ``torch.func.grad``).

    Args:
        compute_loss: Unsloth's own ``grpo_compute_loss`` (not a grpo-custom wrapper).
        input_ids: [B, T] completion ids of the call; mask: [B, T]; loss_kwargs: the kwargs Unsloth passes.
    """
    kwargs = {key: value for key, value in loss_kwargs.items() if not key.startswith("grpo_custom")}
    kwargs.update(use_bias_correction_kl=False, importance_sampling_level="token")
    new = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # [B, T]
    advantages = new[:, 0]  # [B]

    def aggregate(ref):
        return compute_loss(ref, new, None, None, input_ids, mask, 1.0, advantages, **kwargs)[0]

    return torch.func.grad(aggregate)(torch.full_like(new, math.log(2.0)))


def chunked_token_weights(compute_loss, input_ids, mask, loss_kwargs: dict, n_chunks: int = 1) -> torch.Tensor:
    """:func:`token_weights` of a whole ``UnslothEfficientGRPO`` call, which splits rows into ``n_chunks``
    (``torch.chunk``) and averages the chunk losses: per-chunk weights / n_chunks, rows concatenated. [B, T]."""
    n_chunks = max(int(n_chunks), 1)
    pieces = [token_weights(compute_loss, ids, rows, loss_kwargs)
              for ids, rows in zip(torch.chunk(input_ids, n_chunks), torch.chunk(mask, n_chunks))]
    return torch.cat(pieces) / n_chunks


def kl_clamped_after_bias_correction(compute_loss) -> bool:
    """Whether Unsloth clamps its k3 to ±10 after multiplying by π/π_old (unsloth_zoo ≥ 2026.10.9) or before.

    Asked with one token: k3(Δ = 3) = e³ − 4 ≈ 16.1 (clamped to 10) and π/π_old = e^0.5 ≈ 1.65: the loss is
    10·1.65 when the clamp comes first, 10 when it comes after.
    """
    one = torch.ones(1, 1)
    kwargs = {"loss_type": "bnpo", "use_bias_correction_kl": True, "importance_sampling_level": "token",
              "current_gradient_accumulation_steps": 1, "max_completion_length": 1, "num_items_in_batch": None}
    new = torch.zeros(1, 1)
    loss = compute_loss(new + 3.0, new, new - 0.5, None, torch.zeros(1, 1, dtype=torch.long), one, 1.0,
                        torch.zeros(1), **kwargs)[0]
    value = float(loss)
    if math.isclose(value, 10.0, rel_tol=1e-4):
        return True
    if math.isclose(value, 10.0 * math.exp(0.5), rel_tol=1e-4):
        return False
    raise UnslothDecisionError(f"Unsloth's clamped, bias-corrected k3 probe gave {value}; expected 10 (clamp after "
                               f"the correction) or {10.0 * math.exp(0.5):.4f} (before).")
