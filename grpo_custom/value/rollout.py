"""The critic at generation time: old values V_old, the critic's returns, what the batch carries to the loss.

Order inside TRL's ``_generate_and_score_completions`` (each a fork hook):

1. :func:`rollout_values`: one no-grad forward of the policy's decoder (no LM head) over the generated batch, in
   the layout the loss forward will use (:func:`critic_values`), so V_old equals the loss's first V on the same
   weights (the ``adapter`` kind: the decoder with the critic adapter active);
2. :func:`gathered_values` gives the estimator V_old of the whole (gathered) batch [N, T];
3. :func:`record_returns`: R = GAE_λc(r, V_old) + V_old with the critic's λ (VC-PPO), this process's rows kept;
   logs ``value/explained_variance`` (not for a batch whose returns are constant: it is undefined there),
   ``value/mean``, ``value/returns_mean`` (and ``value/policy_lam`` when the estimator's λ is ``"adaptive"``),
   over the global batch;
4. :func:`add_value_outputs`: V_old and R join TRL's batch dict, so TRL's shuffle and split keep them aligned.
"""
from __future__ import annotations

import contextlib
import math

import torch

from grpo_custom.value.critic import OLD_VALUES_KEY, RETURNS_KEY, critic_of, on_fast_path


def left_pack(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Each row's pad tokens moved to its end, order of the others kept (Unsloth's ``left_pack_padding``): [B, S]."""
    is_pad = (input_ids == pad_token_id).to(torch.int8)
    order = torch.sort(is_pad, dim=1, stable=True).indices  # [B, S] real tokens first
    return input_ids.gather(1, order)


def forward_lengths(trainer, prompt_ids, prompt_mask, completion_ids, completion_mask):
    """``(row_lengths [B], prompt_lengths [B])``: real tokens as the policy's forward sees them.

    TRL's forward: its attention mask (prompt mask + completion mask); Unsloth's: ``ids != pad``.
    """
    if on_fast_path(trainer):
        pad = trainer.processing_class.pad_token_id
        prompt_lengths = (prompt_ids != pad).sum(1)
        return prompt_lengths + (completion_ids != pad).sum(1), prompt_lengths
    prompt_lengths = prompt_mask.sum(1)
    return prompt_lengths + completion_mask.sum(1), prompt_lengths


def rollout_values(trainer, prompt_completion_ids: torch.Tensor, attention_mask: torch.Tensor,
                   logits_to_keep: int) -> None:
    """V_old [B, T] of this process's generated batch into ``critic.batch`` (nothing without a critic)."""
    critic = critic_of(trainer)
    if critic is None:
        return
    with torch.no_grad(), critic_weights(trainer, critic):
        values = critic_values(trainer, critic, prompt_completion_ids, attention_mask, logits_to_keep)  # [B, T]
    completion_mask = attention_mask[:, prompt_completion_ids.shape[1] - logits_to_keep:]
    critic.batch = {OLD_VALUES_KEY: values * completion_mask.to(values.dtype)}


def critic_values(trainer, critic, prompt_completion_ids: torch.Tensor, attention_mask: torch.Tensor,
                  logits_to_keep: int) -> torch.Tensor:
    """V of the state before each completion token, [B, T] float32, from a forward of the decoder alone (no LM
    head) over ``prompt_completion_ids`` [B, S] (TRL's layout: left-padded prompts, then T completion tokens).

    The forward uses the layout of the policy's loss forward, so on the same weights it gives the loss's V: TRL's
    rows with their mask; Unsloth's pads moved to the end of each row (as its loss does; right padding also
    survives its training forwards, which drop the attention mask). Run it inside :func:`critic_weights`.
    Autograd records it when grad mode is on (the ``adapter`` kind's loss).
    """
    prompt_width = prompt_completion_ids.shape[1] - logits_to_keep
    prompt_ids, completion_ids = prompt_completion_ids[:, :prompt_width], prompt_completion_ids[:, prompt_width:]
    prompt_mask, completion_mask = attention_mask[:, :prompt_width], attention_mask[:, prompt_width:]
    row_lengths, prompt_lengths = forward_lengths(trainer, prompt_ids, prompt_mask, completion_ids, completion_mask)
    from grpo_custom.value.capture import decoder_of

    decoder = decoder_of(trainer.model)
    if on_fast_path(trainer):
        pad = trainer.processing_class.pad_token_id
        ids = left_pack(prompt_completion_ids, pad)
        mask = (ids != pad).to(attention_mask.dtype)
    else:
        ids, mask = prompt_completion_ids, attention_mask
    with critic.capture.recording(grad_only=False):
        decoder(input_ids=ids, attention_mask=mask, use_cache=False)
        calls = critic.capture.take()
    return critic.values(calls, row_lengths, prompt_lengths, logits_to_keep, trainer.max_completion_length)


def critic_weights(trainer, critic):
    """A context with the critic's weights in the decoder: the critic adapter active for the ``adapter`` kind
    (:func:`grpo_custom.value.adapter.critic_adapter_active`); nothing to change for the head kinds."""
    if critic.config.kind == "adapter":
        from grpo_custom.value.adapter import critic_adapter_active

        return critic_adapter_active(trainer.model)
    return contextlib.nullcontext()


def gathered_values(trainer, full_mask: torch.Tensor) -> torch.Tensor | None:
    """V_old of the whole generation batch, [N, T] like the gathered completion mask (None without a critic)."""
    critic = critic_of(trainer)
    if critic is None:
        return None
    values = critic.batch.get(OLD_VALUES_KEY)
    if values is None:
        raise RuntimeError("value_function: no old values for this batch (rollout_values did not run).")
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:
        values = accelerator.gather(accelerator.pad_across_processes(values, dim=1, pad_index=0))
    return values[:, : full_mask.shape[1]].to(full_mask.device)


def record_returns(trainer, token_rewards: torch.Tensor, values: torch.Tensor, full_mask: torch.Tensor,
                   lengths: torch.Tensor | None = None, estimator_options: dict | None = None) -> None:
    """The critic's targets R = GAE(γ, λ_critic) + V_old for this process's rows, and the rollout metrics.

    Args:
        token_rewards: [N, T] of the gathered batch (outcome rewards on the last scored token, or a reward
            function's per-token rewards). values: [N, T] V_old (:func:`gathered_values`). full_mask: [N, T].
        lengths: [N] completion lengths (for the logged adaptive policy λ). estimator_options: the ``gae``
            estimator's options (γ; ``lam="adaptive"`` and ``alpha``).
    """
    critic = critic_of(trainer)
    if critic is None:
        return
    from grpo_custom.algorithms.estimators.gae import adaptive_lambda, compute_gae
    from grpo_custom.algorithms.value_loss import explained_variance

    options = dict(estimator_options or {})
    mask = full_mask.to(torch.bool)
    gamma = float(options.get("gamma", 1.0))
    _, returns = compute_gae(token_rewards.float(), values.float(), mask, gamma=gamma, lam=critic.config.lam,
                             process_sum=None)  # [N, T]
    accelerator = trainer.accelerator
    local = critic.batch[OLD_VALUES_KEY]
    rows = local.shape[0]
    start = accelerator.process_index * rows
    critic.batch[RETURNS_KEY] = returns[start: start + rows, : local.shape[1]].to(local.device)
    if trainer.model.training:  # folded into μ_R, σ_R after this batch's first optimizer step (loss_term)
        critic.pending_returns = (returns, mask)
    weights = mask.to(torch.float32)
    count = weights.sum().clamp(min=1.0)
    metrics = {
        "value/explained_variance": float(explained_variance(values.float(), returns, mask)),
        "value/mean": float((values.float() * weights).sum() / count),
        "value/returns_mean": float((returns * weights).sum() / count),
    }
    if math.isnan(metrics["value/explained_variance"]):  # constant returns: undefined, not logged for this batch
        del metrics["value/explained_variance"]
    if options.get("lam") == "adaptive" and lengths is not None:
        metrics["value/policy_lam"] = float(adaptive_lambda(lengths.float(), alpha=options.get("alpha", 0.05)).mean())
    mode = "train" if trainer.model.training else "eval"
    for name, value in metrics.items():
        trainer._metrics[mode][name].append(value)


def add_value_outputs(trainer, output: dict) -> None:
    """V_old and R ([B, T], this process) into TRL's batch dict (no-op without a critic)."""
    critic = critic_of(trainer)
    if critic is None:
        return
    if RETURNS_KEY not in critic.batch:
        raise RuntimeError("value_function: no returns for this batch: the advantage hook did not record them "
                           "(advantage_estimator must be 'gae').")
    output.update(critic.batch)
    critic.batch = {}
