"""TRL's loss metrics under Unsloth's fast loss, with TRL's names and meanings.

Unsloth's compiled trainer replaces TRL's ``_compute_loss``, where TRL logs ``entropy`` (every step),
``policy_loss`` and ``entropy_coef`` (with its entropy bonus), ``kl`` (only when ``beta != 0``), the
luspo clip ratios and ``vespo/phi_seq_mean``; Unsloth logs none of these but ``kl`` (always, 0.0 with
``beta = 0``). One :class:`LossCallMetrics` per ``grpo_accumulated_loss`` call (a context variable set by
grpo-custom's wrapper of it, see :mod:`grpo_custom.unsloth.loss_terms`) collects what the call computes:

- entropies: from Unsloth's entropy log-softmax when its loss computes them anyway (entropy bonus,
  ``top_entropy_quantile``, entropy regularizers); otherwise the wrapped plain log-softmax functions
  compute them once more under ``torch.no_grad()``, chunk by chunk (one extra LM-head matmul in the
  forward, no memory kept: ``entropy`` costs that on Unsloth's path, as TRL's own path always computes it);
- TRL's entropy-bonus term Σ w·H (the weights of TRL's ``entropy_coef`` alone).

:func:`log_loss_call` then logs, per call as TRL does per micro-batch: ``entropy`` = masked mean of the
per-token entropies over the completion tokens (summed over processes); ``policy_loss`` = the loss
without TRL's entropy bonus, at TRL's scale for the loss type; ``entropy_coef``; the luspo clip ratios
and ``vespo/phi_seq_mean`` (from TRL's own ``get_gamma_weights``). :func:`drop_zero_beta_kl` removes
Unsloth's ``kl`` when ``beta == 0``. tests/unsloth/test_metrics_parity.py compares every key and value
with stock TRL's.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
from dataclasses import dataclass, field

import torch

from grpo_custom.unsloth.entropy_kernel import LogitTransform, chunk_bounds

# TRL 1.15 _compute_loss: these loss types set policy_loss before dividing by the accumulation steps.
POLICY_LOSS_BEFORE_ACCUMULATION = ("grpo", "sapo", "bnpo", "dr_grpo", "luspo")
_ROWS_ELEMENTS = 1 << 26  # float32 logits per no-grad entropy slice (256 MiB)


@dataclass
class LossCallMetrics:
    """What one ``grpo_accumulated_loss`` call computed that TRL's metrics need."""

    entropies: list = field(default_factory=list)  # [rows, T] (padded path) or [1, n] (packed path) tensors
    from_unsloth: bool = False  # Unsloth's loss computed the entropies itself (return_entropy=True)
    trl_bonus: float = 0.0  # Σ w·H of TRL's entropy bonus (w from TRL's entropy_coef alone)
    trl_bonus_weights: torch.Tensor | None = None
    inside_log_softmax: bool = False  # a wrapped log-softmax is running (it may call another wrapped one)


_call: contextvars.ContextVar[LossCallMetrics | None] = contextvars.ContextVar("grpo_custom_trl_metrics", default=None)


def begin_loss_call() -> contextvars.Token:
    """Start collecting for one loss call; pass the token to :func:`end_loss_call`."""
    return _call.set(LossCallMetrics())


def end_loss_call(token: contextvars.Token) -> LossCallMetrics:
    """Stop collecting; returns what the call collected."""
    state = _call.get()
    _call.reset(token)
    return state


def record_unsloth_entropies(entropies: torch.Tensor) -> None:
    """Entropies Unsloth's loss computed itself ([rows, T] or [1, n]); the plain wrappers then add none."""
    state = _call.get()
    if state is not None:
        if not state.from_unsloth:
            state.entropies.clear()
        state.from_unsloth = True
        state.entropies.append(entropies.detach())


def record_trl_bonus_weights(weights: torch.Tensor) -> None:
    """The per-token weights of TRL's own entropy bonus in this call (``grpo_entropy_bonus_weights``)."""
    state = _call.get()
    if state is not None:
        state.trl_bonus_weights = weights.detach()


def record_bonus(entropies: torch.Tensor) -> None:
    """At ``UnslothGRPOEntropyBonus``: TRL's bonus term Σ w·H with the recorded TRL weights."""
    state = _call.get()
    if state is not None and state.trl_bonus_weights is not None:
        state.trl_bonus += float((entropies.detach().float() * state.trl_bonus_weights.float()).sum())


@torch.no_grad()
def _entropies_of_logits(flat: torch.Tensor, transform) -> torch.Tensor:
    """Per-row entropy −Σ p log p of ``transform(flat[rows])`` [n, V] → [n], in slices of ≤ 2²⁶ logits."""
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    step = max(1, _ROWS_ELEMENTS // max(int(flat.shape[-1]), 1))
    for start in range(0, flat.shape[0], step):
        log_p = torch.log_softmax(transform(flat[start:start + step]), dim=-1)
        out[start:start + step] = -(log_p.exp() * log_p).sum(-1)
    return out


def _recording_log_softmax(original, entropies_of):
    """``original`` (a log-softmax of Unsloth's loss), wrapped: inside a loss call whose entropies Unsloth does
    not compute, the outermost wrapped call also records ``entropies_of(bound arguments)`` (no grad). The wrapper
    keeps the original's signature (``functools.wraps``): Unsloth reads parameter defaults off it."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        state = _call.get()
        if state is None or state.inside_log_softmax:  # outside a loss call, or called by another wrapped one
            return original(*args, **kwargs)
        state.inside_log_softmax = True
        try:
            result = original(*args, **kwargs)
        finally:
            state.inside_log_softmax = False
        if not state.from_unsloth:
            call = signature.bind(*args, **kwargs)
            call.apply_defaults()
            state.entropies.append(entropies_of(call.arguments))
        return result

    wrapper.grpo_custom_original = original
    return wrapper


@torch.no_grad()
def _hidden_state_entropies(options: dict) -> torch.Tensor:
    """Per-token entropies [rows, T] of ``transform(h Wᵀ + b)`` for the hidden states of a scorer call."""
    hidden_states, lm_head, bias = options["hidden_states"], options["lm_head"], options.get("lm_head_bias")
    transform = LogitTransform(float(options["logit_scale_multiply"]), float(options["logit_scale_divide"]),
                               float(options["logit_softcapping"]), float(options["temperature"]))
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    bounds = chunk_bounds(flat.shape[0], max(int(options["chunks"]), 1))
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        logits = flat[start:end] @ lm_head.t()  # [rows, V]
        if bias is not None:
            logits = logits + bias
        pieces.append(_entropies_of_logits(logits, transform.apply))
    return torch.cat(pieces).view(hidden_states.shape[:-1])


def _logit_entropies(options: dict) -> torch.Tensor:
    """Per-token entropies [rows, T] of ``logits / temperature`` (models whose forward returns logits)."""
    logits, temperature = options["logits"], float(options["temperature"])
    flat = logits.reshape(-1, logits.shape[-1])
    return _entropies_of_logits(flat, lambda z: z.to(torch.float32) / temperature).view(logits.shape[:-1])


def make_hidden_log_softmax(original):
    """Unsloth's hidden-state log-prob scorer (``chunked_hidden_states_selective_log_softmax``,
    ``grpo_chunked_hidden_states_logprobs``) recording the entropies of the same logits."""
    return _recording_log_softmax(original, _hidden_state_entropies)


def make_logits_log_softmax(original):
    """Unsloth's ``chunked_selective_log_softmax`` (raw logits) recording the entropies of ``logits / temperature``."""
    return _recording_log_softmax(original, _logit_entropies)


def _masked_mean(trainer, values: torch.Tensor, mask: torch.Tensor) -> float:
    """TRL's ``global_masked_mean``: Σ values·mask / Σ mask over processes ([B, 1] values: a mean over rows)."""
    if values.shape[1] == 1:
        local = torch.stack([values.float().sum(), torch.tensor(float(values.shape[0]), device=values.device)])
    else:
        local = torch.stack([(values.float() * mask).sum(), mask.sum().float()])
    totals = trainer.accelerator.reduce(local, reduction="sum")
    return float(totals[0] / totals[1].clamp(min=1.0))


def _entropy(trainer, state: LossCallMetrics, mask: torch.Tensor) -> float | None:
    """Masked mean entropy over the completion tokens of this call (see the module docstring)."""
    if not state.entropies:
        return None
    pieces = [piece.to(mask.device) for piece in state.entropies]
    if all(piece.dim() == 2 and piece.shape[1] == mask.shape[1] for piece in pieces):
        stacked = torch.cat(pieces, dim=0)
        if stacked.shape == mask.shape:
            return _masked_mean(trainer, stacked, mask.float())
    # the packed path: the log-softmax ran on exactly the completion tokens, concatenated
    flat = torch.cat([piece.reshape(-1) for piece in pieces]).float()
    local = torch.stack([flat.sum(), torch.tensor(float(flat.numel()), device=flat.device)])
    totals = trainer.accelerator.reduce(local, reduction="sum")
    return float(totals[0] / totals[1].clamp(min=1.0))


def log_loss_call(trainer, state: LossCallMetrics, result, loss_kwargs: dict, trl_entropy_coef: float,
                  bonus_enabled: bool | None = None) -> None:
    """Log TRL's loss metrics for one ``grpo_accumulated_loss`` call (``result``: its 7-tuple).

    ``trl_entropy_coef`` is logged as ``entropy_coef``; ``bonus_enabled`` (default: that coefficient is
    non-zero; True under ``use_adaptive_entropy``, as in TRL) decides whether ``policy_loss`` is logged.
    """
    mode = "train" if trainer.model.training else "eval"
    metrics = trainer._metrics[mode]
    loss, coef_1, mask = result[0], result[5], result[6]
    mask = mask.float()
    entropy = _entropy(trainer, state, mask)
    if entropy is not None:
        metrics["entropy"].append(entropy)
    loss_type = trainer.loss_type
    if bonus_enabled is None:
        bonus_enabled = trl_entropy_coef != 0.0
    if bonus_enabled:
        policy_loss = float(loss.detach()) - state.trl_bonus
        if loss_type in POLICY_LOSS_BEFORE_ACCUMULATION and mode == "train":
            policy_loss *= float(trainer.current_gradient_accumulation_steps)
        gathered = trainer.accelerator.gather(torch.tensor(policy_loss, device=loss.device))
        metrics["policy_loss"].append(float(gathered.nanmean()))
        if mode == "train" and trainer.accelerator.sync_gradients:
            metrics["entropy_coef"].append(trl_entropy_coef)
    advantages = loss_kwargs.get("advantages")
    if coef_1 is None or advantages is None:
        return
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    if loss_type == "luspo":  # Unsloth logs the clip ratios of the other clipped loss types itself
        _log_clip_ratios(trainer, metrics, coef_1.detach(), advantages, mask)
    elif loss_type == "vespo" and hasattr(trainer, "get_gamma_weights"):
        args = trainer.args
        with torch.no_grad():
            phi_seq = trainer.get_gamma_weights(
                advantages=advantages, log_ratio_per_token=torch.log(coef_1.detach().float().clamp(min=1e-30)),
                mask=mask, importance_sampling_ratio=None, k_pos=args.vespo_k_pos, lambda_pos=args.vespo_lambda_pos,
                k_neg=args.vespo_k_neg, lambda_neg=args.vespo_lambda_neg)
        metrics["vespo/phi_seq_mean"].append(_masked_mean(trainer, phi_seq, mask))


def _log_clip_ratios(trainer, metrics, coef_1: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> None:
    """TRL's ``clip_ratio/*`` (low/high/region means over tokens; per-sequence low min and high max)."""
    from trl.trainer.utils import nanmax, nanmin

    low = ((coef_1 < 1 - trainer.epsilon_low) & (advantages < 0)).float()
    high = ((coef_1 > 1 + trainer.epsilon_high) & (advantages > 0)).float()

    def per_sequence(x):
        return x.squeeze(1) if x.shape[1] == 1 else (x * mask).sum(-1) / mask.sum(-1)

    metrics["clip_ratio/low_mean"].append(_masked_mean(trainer, low, mask))
    metrics["clip_ratio/high_mean"].append(_masked_mean(trainer, high, mask))
    metrics["clip_ratio/region_mean"].append(_masked_mean(trainer, torch.maximum(low, high), mask))
    metrics["clip_ratio/low_min"].append(float(nanmin(trainer.accelerator.gather(per_sequence(low)))))
    metrics["clip_ratio/high_max"].append(float(nanmax(trainer.accelerator.gather(per_sequence(high)))))


def drop_zero_beta_kl(trainer) -> None:
    """Remove the ``kl`` value Unsloth's ``compute_loss`` just logged when ``beta == 0`` (TRL logs none then)."""
    if getattr(trainer, "beta", 0.0) != 0.0:
        return
    mode = "train" if trainer.model.training else "eval"
    values = trainer._metrics[mode].get("kl")
    if values:
        values.pop()
        if not values:
            del trainer._metrics[mode]["kl"]


def recording_entropies(make_wrapper):
    """A wrapper factory like ``make_wrapper`` whose wrapper also records the entropies its
    ``return_entropy=True`` calls return (``(logps, entropies)``) inside a loss call."""

    def factory(original):
        inner = make_wrapper(original)

        @functools.wraps(inner)
        def wrapper(*args, **kwargs):
            result = inner(*args, **kwargs)
            if isinstance(result, tuple) and len(result) == 2 and _call.get() is not None:
                record_unsloth_entropies(result[1])
            return result

        wrapper.grpo_custom_original = original
        return wrapper

    return factory


def metric_bindings() -> list:
    """``(owner, attribute, wrapper factory)`` for Unsloth's plain log-softmax functions, which its
    ``grpo_accumulated_loss`` imports from ``unsloth_zoo.rl_replacements`` at call time."""
    import unsloth_zoo.rl_replacements as zoo

    bindings = [
        (zoo, "chunked_hidden_states_selective_log_softmax", make_hidden_log_softmax),
        (zoo, "chunked_selective_log_softmax", make_logits_log_softmax),
    ]
    if hasattr(zoo, "grpo_chunked_hidden_states_logprobs"):  # unsloth_zoo >= 2026.10.9: the loss's hidden-state scorer
        bindings.append((zoo, "grpo_chunked_hidden_states_logprobs", make_hidden_log_softmax))
    return bindings
