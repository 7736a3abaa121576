"""The critic in the loss: V from the hidden states of the policy's own loss forward, the clipped value loss,
the head's optimizer step, the value warm-up.

Both loss paths call the same two functions around the policy's forward: :func:`begin_value_capture` before it
(TRL's ``_compute_loss``; under Unsloth, the trainer's ``compute_loss`` around ``grpo_accumulated_loss``) and
:func:`value_function_loss` after it, whose result is added to the loss:

- kind ``head``: ``L_V − stop_gradient(L_V)``: the value is 0 (the logged loss stays the policy's) and the
  gradient reaches only the head (its hidden states were captured detached);
- kind ``shared_head``: its value is ``coef · L_V``; the policy's trainable weights get coef·∇L_V through the
  hidden states, the head its own ∇L_V (so its clipping and learning rate do not depend on ``coef``);
- kind ``adapter``: 0; the critic's forward (the critic adapter active) and backward run before the policy's
  forward, inside :func:`begin_value_capture`.

L_V = value_loss(V, R, V_old, mask; cliprange_value, loss_type) (``grpo_custom.value_loss``), divided by the
gradient-accumulation steps as TRL divides its loss. The head's AdamW steps right after the policy's optimizer
(a step hook on it); during ``warmup_steps`` a pre-step hook drops the policy's gradients, so the optimizer
leaves every policy weight and its state untouched (VC-PPO's value pretraining).
"""
from __future__ import annotations

import torch

from grpo_custom.value.critic import OLD_VALUES_KEY, RETURNS_KEY, critic_of
from grpo_custom.value.rollout import forward_lengths


def begin_value_capture(trainer, inputs: dict | None = None) -> None:
    """Before the policy's forward of this loss call (training only): the head kinds start keeping its hidden
    states; the ``adapter`` kind runs its own step here (:func:`adapter_value_backward`), before the policy's
    graph exists, so the two graphs are never held at once."""
    critic = critic_of(trainer)
    if critic is None:
        return
    _install_optimizer_hooks(trainer, critic)
    if critic.config.kind == "adapter":
        if trainer.model.training:
            adapter_value_backward(trainer, critic, inputs)
        return
    critic.capture.start(grad_only=True)


def value_function_loss(trainer, inputs: dict) -> torch.Tensor | float:
    """The critic's term for this micro-batch (0.0 without a critic, outside training and for the ``adapter`` kind,
    whose gradient :func:`begin_value_capture` already made); logs ``value/loss`` and ``value/clipfrac``
    averaged over processes."""
    critic = critic_of(trainer)
    if critic is None:
        return 0.0
    critic.capture.stop()
    calls = critic.capture.take()
    if not trainer.model.training or critic.config.kind == "adapter":
        return 0.0
    completion_mask = inputs["completion_mask"]
    row_lengths, prompt_lengths = forward_lengths(trainer, inputs["prompt_ids"], inputs["prompt_mask"],
                                                  inputs["completion_ids"], completion_mask)
    shared = critic.config.kind == "shared_head"
    vpreds = critic.values(calls, row_lengths, prompt_lengths, completion_mask.shape[1], trainer.max_completion_length,
                           feature_grad_scale=critic.config.coef if shared else 1.0)  # [B, T]
    loss = _clipped_value_loss(trainer, critic, vpreds, inputs)
    if shared:  # value coef·L_V; gradient ∇L_V to the head, coef·∇L_V to the policy (through the hidden states)
        return loss - (1.0 - critic.config.coef) * loss.detach()
    return loss - loss.detach()


def adapter_value_backward(trainer, critic, inputs: dict) -> None:
    """The ``adapter`` kind's micro-batch: V from a forward of the decoder with the critic adapter active (the
    policy's adapter off), L_V, and its backward into the head and the critic adapter (gradient checkpointing
    recomputes inside the same context, so with the same adapter). Nothing reaches the policy's weights."""
    from grpo_custom.value.rollout import critic_values, critic_weights

    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)  # [B, P + T]
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.enable_grad(), critic_weights(trainer, critic):
        vpreds = critic_values(trainer, critic, ids, mask, inputs["completion_ids"].shape[1])  # [B, T]
        _clipped_value_loss(trainer, critic, vpreds, inputs).backward()


def _clipped_value_loss(trainer, critic, vpreds: torch.Tensor, inputs: dict) -> torch.Tensor:
    """L_V of this micro-batch (scaled for gradient accumulation as TRL's loss); logs its metrics."""
    from grpo_custom.algorithms.value_loss import value_loss

    completion_mask = inputs["completion_mask"]
    mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
    loss, metrics = value_loss(
        vpreds, inputs[RETURNS_KEY], inputs[OLD_VALUES_KEY], mask.to(vpreds.dtype),
        cliprange_value=critic.config.cliprange_value, loss_type=trainer.loss_type,
        max_completion_length=trainer.max_completion_length, num_items_in_batch=inputs.get("num_items_in_batch"),
        num_processes=trainer.accelerator.num_processes,
        accumulation_steps=trainer.current_gradient_accumulation_steps,
        steps_per_generation=trainer.args.steps_per_generation,
    )
    accumulation = trainer.current_gradient_accumulation_steps
    logged = torch.stack([loss.detach().float() * accumulation, metrics["clipfrac"].float().to(loss.device)])
    if trainer.accelerator.num_processes > 1:
        logged = trainer.accelerator.gather(logged.unsqueeze(0)).mean(0)
    value, clipfrac = logged.tolist()
    trainer._metrics["train"]["value/loss"].append(value)
    trainer._metrics["train"]["value/clipfrac"].append(clipfrac)
    return loss


def in_warmup(trainer, critic) -> bool:
    """Whether the current optimizer step is one of the critic-only warm-up steps."""
    return int(trainer.state.global_step) < critic.config.warmup_steps


def _install_optimizer_hooks(trainer, critic) -> None:
    """Hooks on the policy's torch optimizer (once per optimizer): warm-up pre-step, head step after it."""
    optimizer = getattr(trainer, "optimizer", None)
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    if optimizer is None or (critic.optimizer_hooks and critic.optimizer_hooks[0] is optimizer):
        return
    for handle in critic.optimizer_hooks[1:]:
        handle.remove()

    def before_policy_step(policy_optimizer, args, kwargs):
        if in_warmup(trainer, critic):
            for group in policy_optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None  # torch optimizers skip a parameter without a gradient
        return None

    def after_policy_step(policy_optimizer, args, kwargs):
        norm = critic.optimizer.step()
        if critic.pending_returns is not None:  # μ_R, σ_R move between updates, never inside a loss
            critic.head.update_return_stats(*critic.pending_returns)
            critic.pending_returns = None
        mode = "train"
        trainer._metrics[mode]["value/grad_norm"].append(norm)
        trainer._metrics[mode]["value/warmup"].append(float(in_warmup(trainer, critic)))

    critic.optimizer_hooks = (optimizer, optimizer.register_step_pre_hook(before_policy_step),
                              optimizer.register_step_post_hook(after_policy_step))
