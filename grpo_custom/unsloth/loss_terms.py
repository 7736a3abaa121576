"""grpo-custom's regularizer terms inside Unsloth's fast GRPO loss.

Unsloth's generated trainer computes the loss in ``grpo_accumulated_loss``: per-token log-probs
from the chunked hidden-state log-softmax (never a [B, T, V] logits tensor), then
``UnslothEfficientGRPO``, which takes the gradient w.r.t. those log-probs inside its forward
with ``torch.func.grad_and_value`` over ``grpo_compute_loss``. Its backward ignores the outer
gradient, so a term must be *inside* ``grpo_compute_loss`` to train (GUIDE §3.5).

:func:`install_loss_terms` rebinds, in the generated module only:

- ``grpo_accumulated_loss`` → a wrapper that evaluates this step's coefficients (as tensors, so a
  scheduled coefficient never recompiles anything) and passes the loss-placed, log-prob-based
  regularizers down to ``grpo_compute_loss`` through its kwargs;
- ``grpo_compute_loss`` → a wrapper that adds Σ coef · term to Unsloth's loss, each term weighted
  exactly like Unsloth aggregates its own per-token loss (weights asked from Unsloth: :mod:`grpo_custom.unsloth.decisions`);
  it runs inside Unsloth's ``torch.compile(fullgraph=True)`` region, so it is pure tensor math;
- ``UnslothEfficientGRPO`` → the same class whose ``apply`` first logs the terms' metrics, eagerly;
- ``grpo_compute_loss_slow`` (Unsloth's non-chunked fallback) → the same log-prob terms; entropy terms raise;
- the trainer's ``compute_loss`` → token-level advantages [B, T] are first moved into Unsloth's
  left-packed loss layout (:func:`align_token_advantages`); with ``value_function`` the value head reads the
  hidden states of Unsloth's own forward (:mod:`grpo_custom.value.loss_term`).

Entropies (for entropy regularizers, TRL's ``entropy_coef`` and ``top_entropy_quantile``) come from
the chunked log-softmax that Unsloth calls with ``return_entropy=True``; while patched, that call
runs :func:`grpo_custom.unsloth.entropy_kernel.chunked_logps_and_entropies` (one LM-head pass, float32
log-probs kept per chunk) whenever Unsloth's own log-prob path would keep its chunk logits for
that batch, and Unsloth's recomputing kernel otherwise (see :mod:`grpo_custom.unsloth.entropy_plan`; the
``entropy_kernel`` option overrides). The entropy enters through Unsloth's
``UnslothGRPOEntropyBonus``: during the call, ``unsloth_zoo.rl_replacements.grpo_entropy_bonus_weights``
returns TRL's ``entropy_coef`` weights plus ours. Token weights, the keep-or-offload choice and the scorer
are asked from the installed Unsloth (:mod:`grpo_custom.unsloth.decisions`), never restated here.
:func:`remove_loss_terms` undoes the rebinding.
"""
from __future__ import annotations

import contextvars
import sys
from dataclasses import dataclass, field

import torch

from grpo_custom.algorithms.regularizers import RegularizerInputs
from grpo_custom.algorithms.token_layout import completion_to_window
from grpo_custom.fork.hooks.loss import parameter_regularizer_loss
from grpo_custom.fork.hooks.metrics import _over_processes
from grpo_custom.unsloth import adaptive_entropy, trl_metrics
from grpo_custom.unsloth.decisions import chunked_token_weights, token_weights
from grpo_custom.unsloth.final_log import make_trl_window_log
from grpo_custom.unsloth.entropy_plan import _entropy_plan, entropy_plan_for, make_entropy_log_softmax
from grpo_custom.unsloth.policy_term import POLICY_KEY, PolicyStep, PolicyTerm, _policy_step, policy_loss_value
from grpo_custom.value.loss_term import begin_value_capture, value_function_loss

TERMS_KEY = "grpo_custom_terms"
_current_step: contextvars.ContextVar["FastLossStep | None"] = contextvars.ContextVar("grpo_custom_fast_loss",
                                                                                       default=None)
_loss_trainer: contextvars.ContextVar[object | None] = contextvars.ContextVar("grpo_custom_loss_trainer", default=None)


@dataclass
class FastLossStep:
    """What one ``grpo_accumulated_loss`` call needs: this step's specs and coefficients, and its metrics."""

    logp_terms: list  # [(spec, coef tensor)] loss-placed regularizers on log-probs
    entropy_terms: list  # [(spec, coef float)] loss-placed regularizers needing entropy
    trl_entropy_coef: float
    metrics: dict = field(default_factory=dict)
    entropy_token_weights: torch.Tensor | None = None  # [B, T] loss-type weights of the entropy terms
    entropy_accumulation: float = 1.0  # the accumulation divisor inside those weights (undone for logging)
    compute_loss: object = None  # Unsloth's own grpo_compute_loss (asked for token weights)
    n_chunks: int = 1  # row chunks of this call's UnslothEfficientGRPO (the token weights follow them)

    def record(self, spec, metrics: dict) -> None:
        """Accumulate a chunk's metrics (averaged over chunks when logged)."""
        for key, value in metrics.items():
            total, count = self.metrics.get((spec.metric_prefix, key), (0.0, 0))
            self.metrics[(spec.metric_prefix, key)] = (total + float(value), count + 1)


def logp_terms_at(specs, step: int) -> list:
    """``[(spec, coefficient tensor)]`` at optimizer step ``step``: tensors, so a moving coefficient never recompiles."""
    return [(spec, torch.tensor(spec.coef_at(step), dtype=torch.float32)) for spec in specs]


def _masked(tensor, keep):
    return None if tensor is None else torch.where(keep, tensor, 0.0)


def make_compute_loss(original):
    """``grpo_compute_loss`` plus grpo-custom's log-prob terms (passed in kwargs under ``TERMS_KEY``).

    This runs inside Unsloth's ``torch.compile(fullgraph=True)`` chunk loss, so it only does tensor
    math: Σ coef · Σ_t weights·term, with the weights Unsloth's own ``original`` gives its per-token loss
    (:func:`grpo_custom.unsloth.decisions.token_weights`: loss type, BNPO normaliser, accumulation).
    """

    def grpo_compute_loss(ref, new, old, sampling_per_token_logps, input_ids, mask, beta, advantages, **kwargs):
        terms = kwargs.pop(TERMS_KEY, None)
        # grpo-custom's policy loss replaces Unsloth's: its term gets zero advantages (KL, masks, metrics stay)
        policy_advantages = torch.zeros_like(advantages) if kwargs.pop(POLICY_KEY, False) else advantages
        result = original(ref, new, old, sampling_per_token_logps, input_ids, mask, beta, policy_advantages, **kwargs)
        if not terms:
            return result
        loss = result[0]
        inputs = _regularizer_inputs(new, old, ref, mask, advantages, kwargs)
        weights = token_weights(original, input_ids, mask, kwargs)  # [B, T]
        for spec, coef in terms:
            loss = loss + coef.to(loss.device) * (spec.term(inputs).to(torch.float32) * weights).sum()
        return (loss, *result[1:])

    grpo_compute_loss.grpo_custom_original = original
    return grpo_compute_loss


def _regularizer_inputs(new, old, ref, mask, advantages, loss_kwargs) -> RegularizerInputs:
    """Inputs with padding positions zeroed in every log-prob tensor, as Unsloth does before its own terms.

    With ``use_bias_correction_kl`` (TRL's default) the ``importance_ratio`` π/π_old is set exactly as
    Unsloth's own KL term gets it: token level exp(new − old), or the exp of the masked mean log-ratio
    per sequence; on-policy (no old log-probs) exp(new − new.detach()), value 1 with the policy's gradient.
    """
    keep = mask.to(torch.bool)
    new, old, ref = _masked(new, keep), _masked(old, keep), _masked(ref, keep)
    ratio = None
    if loss_kwargs.get("use_bias_correction_kl", False):
        log_ratio = new - (old if old is not None else new.detach())  # [B, T]
        if loss_kwargs.get("importance_sampling_level", "token") == "sequence":
            mask_f = mask.to(log_ratio.dtype)
            log_ratio = ((log_ratio * mask_f).sum(-1) / mask_f.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [B, 1]
        ratio = torch.exp(log_ratio)
    return RegularizerInputs(
        logps=new, old_logps=old, ref_logps=ref, mask=mask.to(torch.float32), advantages=advantages,
        entropies=None, model=None, completion_lengths=mask.sum(-1), importance_ratio=ratio,
    )


def make_efficient_grpo(original):
    """``UnslothEfficientGRPO`` whose ``apply`` also logs grpo-custom's log-prob term metrics (eagerly).

    The metrics are computed once per call from the full tensors, outside the compiled chunk loss.
    """

    module = sys.modules[original.__module__]  # the generated trainer module (its grpo_compute_loss)

    class EfficientGRPO:
        grpo_custom_original = original

        @staticmethod
        def apply(new_logps, old_logps, ref_logps, sampling_logps, lm_head, input_ids, mask, advantages, beta,
                  scaler=None, n_chunks=1, extra_kwargs=None, upstream_scale=None):
            step = _current_step.get()
            policy = _policy_step.get() if (extra_kwargs or {}).get(POLICY_KEY) else None
            terms = (extra_kwargs or {}).get(TERMS_KEY) or []
            if step is not None:
                step.n_chunks = int(n_chunks or 1)
            if step is not None and terms:
                with torch.no_grad():
                    inputs = _regularizer_inputs(new_logps.detach(), old_logps, ref_logps, mask, advantages, extra_kwargs)
                    weights = chunked_token_weights(step.compute_loss, input_ids, mask, extra_kwargs, step.n_chunks)
                    accumulation = float(extra_kwargs.get("current_gradient_accumulation_steps", 1))
                    for spec, coef in terms:
                        term, metrics = spec.compute(inputs)
                        contribution = float(coef) * float((term.float() * weights).sum()) * accumulation
                        step.record(spec, {**metrics, "loss": contribution})
            result = original.apply(new_logps, old_logps, ref_logps, sampling_logps, lm_head, input_ids, mask,
                                    advantages, beta, scaler, n_chunks, extra_kwargs, upstream_scale)
            if policy is None:
                return result

            weights = chunked_token_weights(_unsloth_compute_loss(module), input_ids, mask, extra_kwargs, n_chunks or 1)

            def policy_value(leaf):
                value, metrics = policy_loss_value(policy, leaf, old_logps, sampling_logps, mask, advantages,
                                                   extra_kwargs, weights=weights, is_ratio=result[4])
                policy.record(metrics)
                return value

            scaling = scaler.get_scale() if scaler is not None else 1.0
            return (result[0] + PolicyTerm.apply(new_logps, policy_value, scaling, upstream_scale), *result[1:])

    return EfficientGRPO


def align_token_advantages(trainer, inputs: dict) -> torch.Tensor:
    """Token-level advantages [B, T] moved into Unsloth's loss window [B, max_left_pad + T].

    ``max_left_pad`` is read as Unsloth reads it: from the old/ref log-prob width, else the largest
    prompt padding (see :mod:`grpo_custom.algorithms.token_layout`).
    """
    advantages, prompt_ids = inputs["advantages"], inputs["prompt_ids"]
    width = advantages.shape[1]
    pad_id = trainer.processing_class.pad_token_id
    old, ref = inputs.get("old_per_token_logps"), inputs.get("ref_per_token_logps")
    reference = old if old is not None else ref
    max_left_pad = reference.shape[1] - width if reference is not None else int((prompt_ids == pad_id).sum(1).max())
    return completion_to_window(advantages, prompt_ids, pad_id, width + max_left_pad)


def make_trainer_compute_loss(original):
    """The trainer's ``compute_loss``: token-level advantages moved into Unsloth's loss layout first,
    parameter-space regularizers added to the result (TRL's ``_compute_loss``, where the fork adds
    them, is not called under Unsloth)."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        advantages = inputs.get("advantages")
        if advantages is not None and advantages.dim() == 2 and inputs.get("pixel_values") is None:
            inputs = {**inputs, "advantages": align_token_advantages(self, inputs)}
        token = _loss_trainer.set(self)
        begin_value_capture(self, inputs)  # value_function: the head reads this forward's hidden states
        try:
            loss = original(self, model, inputs, *args, **kwargs)
        finally:
            _loss_trainer.reset(token)
        trl_metrics.drop_zero_beta_kl(self)  # Unsloth logs kl = 0.0 with beta = 0; TRL logs none
        # Parameter-space terms (lora_l2) and the value loss do not involve log-probs: their own autograd graph
        # carries the gradient (Unsloth's fast loss ignores the outer gradient of its own term only).
        return loss + parameter_regularizer_loss(self, model) + value_function_loss(self, inputs)

    compute_loss.grpo_custom_original = original
    return compute_loss


def make_slow_compute_loss(original):
    """Unsloth's non-chunked ``grpo_compute_loss_slow`` (used when its efficient log-prob path is off) with
    grpo-custom's log-prob terms too; entropy terms need the chunked path and raise here instead of vanishing."""
    with_terms = make_compute_loss(original)

    def grpo_compute_loss_slow(ref, new, old, sampling_per_token_logps, input_ids, mask, beta, advantages, **kwargs):
        trainer = _loss_trainer.get()
        extras = getattr(trainer, "grpo_custom", None)
        specs = [] if extras is None else extras.placed("loss")
        if any(spec.needs_entropy for spec in specs):
            from grpo_custom.unsloth.honest_config import UnsupportedOnFastPathError

            raise UnsupportedOnFastPathError(
                "Unsloth computed this loss on its non-chunked path (grpo_compute_loss_slow), which has no entropies: "
                f"the regularizer(s) {[s.metric_prefix for s in specs if s.needs_entropy]} cannot apply there."
            )
        if specs:
            kwargs[TERMS_KEY] = logp_terms_at(specs, int(trainer.state.global_step))
        spec = getattr(extras, "policy_loss", None)
        policy = None if spec is None or spec.stock else PolicyStep(spec=spec, step=int(trainer.state.global_step))
        if policy is not None:
            kwargs[POLICY_KEY] = True
        result = with_terms(ref, new, old, sampling_per_token_logps, input_ids, mask, beta, advantages, **kwargs)
        if policy is None:
            return result
        kwargs.pop(POLICY_KEY)
        value, metrics = policy_loss_value(policy, new, old, sampling_per_token_logps, mask, advantages, kwargs,
                                           weights=token_weights(original, input_ids, mask, kwargs), is_ratio=result[4])
        policy.record(metrics)
        _log_policy_metrics(trainer, policy)
        return (result[0] + value, *result[1:])

    grpo_compute_loss_slow.grpo_custom_original = original
    return grpo_compute_loss_slow


def _unsloth_compute_loss(module):
    """The generated module's own ``grpo_compute_loss`` (under grpo-custom's wrapper when installed)."""
    compute_loss = module.grpo_compute_loss
    return getattr(compute_loss, "grpo_custom_original", compute_loss)


def make_accumulated_loss(original):
    """``grpo_accumulated_loss`` that routes this step's regularizers into Unsloth's fast loss."""
    module = sys.modules[original.__module__]

    def grpo_accumulated_loss(trainer, *args, **kwargs):
        input_ids = args[0] if args else kwargs["input_ids"]
        plan_token = _entropy_plan.set(entropy_plan_for(trainer, input_ids))
        trl_entropy_coef = float(getattr(trainer, "entropy_coef", 0.0) or 0.0)
        metrics_token = trl_metrics.begin_loss_call()  # TRL's loss metrics: grpo_custom.unsloth.trl_metrics
        adaptive = None
        try:
            adaptive = adaptive_entropy.begin_call(trainer)  # TRL's adaptive controller: see its module
            result = _with_terms(trainer, *args, **kwargs)
        finally:
            adaptive_entropy.end_call(trainer, adaptive)
            collected = trl_metrics.end_loss_call(metrics_token)
            _entropy_plan.reset(plan_token)
        if adaptive is not None:  # TRL logs policy_loss and the updated coefficient whatever its value
            adaptive_entropy.update_controller(trainer, adaptive[1])
            trl_metrics.log_loss_call(trainer, collected, result, kwargs, float(trainer.entropy_coef), bonus_enabled=True)
            return result
        trl_metrics.log_loss_call(trainer, collected, result, kwargs, trl_entropy_coef)
        return result

    def _with_terms(trainer, *args, **kwargs):
        extras = getattr(trainer, "grpo_custom", None)
        spec = None if extras is None else extras.policy_loss
        if spec is None or spec.stock:
            return _with_regularizers(trainer, *args, **kwargs)
        policy = PolicyStep(spec=spec, step=int(trainer.state.global_step))
        kwargs[POLICY_KEY] = True
        token = _policy_step.set(policy)
        try:
            result = _with_regularizers(trainer, *args, **kwargs)
        finally:
            _policy_step.reset(token)
        _log_policy_metrics(trainer, policy)
        return result

    def _with_regularizers(trainer, *args, **kwargs):
        extras = getattr(trainer, "grpo_custom", None)
        specs = [] if extras is None else extras.placed("loss")
        if not specs:
            return original(trainer, *args, **kwargs)
        global_step = int(trainer.state.global_step)
        step = FastLossStep(
            logp_terms=logp_terms_at([spec for spec in specs if not spec.needs_entropy], global_step),
            entropy_terms=[(spec, spec.coef_at(global_step)) for spec in specs if spec.needs_entropy],
            trl_entropy_coef=float(getattr(trainer, "entropy_coef", 0.0) or 0.0),
            compute_loss=_unsloth_compute_loss(module),
        )
        kwargs[TERMS_KEY] = step.logp_terms
        needs_entropy_pass = any(coef != 0.0 for _, coef in step.entropy_terms)
        token = _current_step.set(step)
        restore_coef = needs_entropy_pass and step.trl_entropy_coef == 0.0
        if restore_coef:
            trainer.entropy_coef = 1.0  # makes Unsloth compute chunked entropies; weights come from us
        try:
            result = original(trainer, *args, **kwargs)
        finally:
            if restore_coef:
                trainer.entropy_coef = 0.0
            _current_step.reset(token)
        _log_fast_loss_metrics(trainer, step)
        return result

    grpo_accumulated_loss.grpo_custom_original = original
    return grpo_accumulated_loss



def make_entropy_bonus_weights(original):
    """Unsloth's entropy-bonus weights plus those of grpo-custom's entropy regularizers."""

    def grpo_entropy_bonus_weights(completion_mask, entropy_mask, entropy_coef, loss_kwargs, trl_version=None,
                                   training=True):
        step = _current_step.get()
        ours_only = step is None or not step.entropy_terms
        adaptive = adaptive_entropy.adaptive_call()
        if adaptive is not None:  # c_apply × the weights at coefficient 1, whose support is TRL's effective mask
            unit = original(completion_mask, entropy_mask, 1.0, loss_kwargs, trl_version, training)
            adaptive_entropy.record_unit_weights(unit)
            weights = adaptive.apply_coef * unit
        else:
            coef = entropy_coef if ours_only else step.trl_entropy_coef
            weights = original(completion_mask, entropy_mask, coef, loss_kwargs, trl_version, training)
        trl_metrics.record_trl_bonus_weights(weights)
        if ours_only:
            return weights
        if not training:
            loss_kwargs = {**loss_kwargs, "current_gradient_accumulation_steps": 1}
        ids = torch.zeros(completion_mask.shape, dtype=torch.long, device=completion_mask.device)
        ours = chunked_token_weights(step.compute_loss, ids, completion_mask, loss_kwargs, step.n_chunks)  # [B, T]
        step.entropy_token_weights = ours
        step.entropy_accumulation = float(loss_kwargs.get("current_gradient_accumulation_steps", 1))
        for spec, coef in step.entropy_terms:
            # The entropy regularizer's term is -H per token; Σ w·H with w = -coef·weights adds coef·Σ weights·(-H).
            weights = weights - coef * ours
        return weights

    grpo_entropy_bonus_weights.grpo_custom_original = original
    return grpo_entropy_bonus_weights


def make_entropy_bonus(original):
    """Unsloth's ``UnslothGRPOEntropyBonus`` that also records the entropies for grpo-custom's metrics."""

    class EntropyBonus:
        grpo_custom_original = original

        @staticmethod
        def apply(entropies, weights, *args):
            trl_metrics.record_bonus(entropies)
            adaptive_entropy.record_entropies(entropies)
            step = _current_step.get()
            if step is not None and step.entropy_terms:
                ours = step.entropy_token_weights
                mask = (ours != 0).to(torch.float32)
                detached = entropies.detach().float()
                mean_entropy = float((detached * mask).sum() / mask.sum().clamp(min=1.0))
                for spec, coef in step.entropy_terms:
                    contribution = -coef * float((detached * ours).sum()) * step.entropy_accumulation
                    step.record(spec, {"value": mean_entropy, "loss": contribution})
            return original.apply(entropies, weights, *args)

    return EntropyBonus


def _log_policy_metrics(trainer, policy: PolicyStep) -> None:
    from grpo_custom.fork.hooks.policy import log_policy_metrics

    metrics = {key: total / count for key, (total, count) in policy.metrics.items()}
    log_policy_metrics(trainer, "train" if trainer.model.training else "eval", policy.spec, policy.step, metrics)


def _log_fast_loss_metrics(trainer, step: FastLossStep) -> None:
    mode = "train" if trainer.model.training else "eval"
    for spec, coef in [*step.logp_terms, *step.entropy_terms]:
        trainer._metrics[mode][f"{spec.metric_prefix}/coef"].append(float(coef))
    keys = list(step.metrics)  # the same keys on every process; the mean over processes, as the fork logs them
    values = _over_processes(trainer, [total / count for total, count in step.metrics.values()])
    for (prefix, key), value in zip(keys, values):
        trainer._metrics[mode][f"{prefix}/{key}"].append(value)


def _loss_bindings(module) -> list:
    """``(owner, attribute, wrapper factory)`` for every Unsloth function grpo-custom wraps."""
    import unsloth_zoo.rl_replacements as zoo

    return [
        (module, "grpo_compute_loss", make_compute_loss),
        (module, "grpo_compute_loss_slow", make_slow_compute_loss),
        (module, "grpo_accumulated_loss", make_accumulated_loss),
        (module, "UnslothEfficientGRPO", make_efficient_grpo),
        (module._UnslothGRPOTrainer, "compute_loss", make_trainer_compute_loss),
        (module._UnslothGRPOTrainer, "log", make_trl_window_log),  # TRL's averages in the final entry
        (zoo, "grpo_entropy_bonus_weights", make_entropy_bonus_weights),
        (zoo, "UnslothGRPOEntropyBonus", make_entropy_bonus),
        (zoo, "chunked_hidden_states_selective_log_softmax_recompute",
         trl_metrics.recording_entropies(make_entropy_log_softmax)),
        *trl_metrics.metric_bindings(),
    ]


def install_loss_terms(module) -> None:
    """Rebind the generated module's loss functions (and unsloth_zoo's entropy pieces) to grpo-custom's wrappers (idempotent)."""
    for owner, name, make_wrapper in _loss_bindings(module):
        current = getattr(owner, name)
        if getattr(current, "grpo_custom_original", None) is None:
            setattr(owner, name, make_wrapper(current))


def remove_loss_terms(module) -> None:
    """Undo :func:`install_loss_terms` (the generated module and unsloth_zoo get Unsloth's own functions)."""
    for owner, name, _ in _loss_bindings(module):
        original = getattr(getattr(owner, name), "grpo_custom_original", None)
        if original is not None:
            setattr(owner, name, original)
