"""The advantage hook: weighted rewards, reward-placed penalties, per-task normalization, the estimator."""
from __future__ import annotations

from typing import Callable

import torch

from grpo_custom.algorithms.estimators import ADVANTAGE_ESTIMATORS, AdvantageInputs, call_estimator
from grpo_custom.algorithms.regularizers import RegularizerInputs
from grpo_custom.fork.hooks.metrics import (
    _log,
    _log_advantage_metrics,
    _log_regularizer,
    _log_reward_error_counts,
    _log_reward_health,
)
from grpo_custom.fork.hooks.policy import mixed_advantages
from grpo_custom.fork.hooks.token_rewards import gathered_token_rewards
from grpo_custom.fork.hooks.value import gathered_values, record_returns
from grpo_custom.fork.hooks.reward_stats import record_reward_distribution


def _gae_options(extras) -> dict:
    """The ``gae`` estimator's options (γ, the policy's λ): the run's, or those of a mix's ``gae`` component."""
    gae = ADVANTAGE_ESTIMATORS.get("gae")
    for component in getattr(extras.estimator, "components", ()):
        if component.function is gae:
            return component.options
    return extras.estimator_options


def _gathered_completion_mask(trainer, completion_mask: torch.Tensor) -> torch.Tensor:
    if trainer.accelerator.num_processes == 1:
        return completion_mask
    padded = trainer.accelerator.pad_across_processes(completion_mask, dim=1, pad_index=0)
    return trainer.accelerator.gather(padded)


def compute_advantages(
    trainer,
    *,
    rewards_per_func: torch.Tensor,
    num_generations: int,
    completion_mask: torch.Tensor,
    inputs: list[dict],
    mode: str,
    ref_per_token_logps: torch.Tensor | None,
    prompt_ids: torch.Tensor | None = None,
    generated_lengths: torch.Tensor | None = None,
    trl_advantages: torch.Tensor | None = None,
    tool_mask: torch.Tensor | None = None,
    old_per_token_logps: torch.Tensor | None,
    policy_per_token_logps: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """Advantages for the whole (gathered) generation batch from the configured estimator.

    Order: weighted sum of the reward functions (NaN for completions no function scored, as in
    TRL) → minus each reward-placed regularizer's ``coef · penalty`` → per-task normalization →
    the estimator. Logs ``advantages/{mean,std,abs_max}``, the reward-health metrics and, with a
    ``task_column``, ``tasks/<task>/*`` (``tasks.task_metrics``) of the rewards before task normalization.
    Completion lengths (opo, the length regularizer, ``length_corr``, task metrics) are ``generated_lengths``
    ([B], this process; :func:`grpo_custom.fork.hooks.lengths.generated_lengths`), not the loss mask. With
    ``num_generations == 1`` (evaluation with ``num_generations_eval=1``) every advantage is 0: a group of
    one has no baseline, TRL's value; penalties, normalization and metrics still run. ``tool_mask`` ([B, T], this
    process; TRL's, 0 on a tool's or environment's output inside a completion): the estimator, the critic's returns
    and the advantage metrics see ``completion_mask * tool_mask`` (gathered), so GAE skips those tokens as the loss
    does.
    """
    extras = trainer.grpo_custom
    device = rewards_per_func.device
    weights = trainer.reward_weights.to(device)
    unscorable = torch.isnan(rewards_per_func).all(dim=1)  # [N]
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)  # [N]
    rewards[unscorable] = torch.nan

    full_mask = _gathered_completion_mask(trainer, completion_mask).to(device)  # [N, T]
    scored_mask = full_mask if tool_mask is None else _gathered_completion_mask(  # [N, T] without tool output
        trainer, completion_mask * tool_mask.to(completion_mask.device)).to(device)
    if generated_lengths is None:
        generated_lengths = completion_mask.sum(dim=1)
    generated_lengths = generated_lengths.to(completion_mask.device)
    lengths = trainer.accelerator.gather(generated_lengths).to(device)  # [N] tokens generated

    reward_specs = extras.placed("reward")
    if reward_specs:
        rewards = rewards - _reward_penalties(
            trainer, reward_specs, completion_mask, ref_per_token_logps, old_per_token_logps,
            policy_per_token_logps, mode, prompt_ids=prompt_ids, generated_lengths=generated_lengths,
        ).to(device)

    tasks = _gathered_task_labels(inputs, extras.task_column) if extras.task_column is not None else None
    rewards_before_normalization = rewards  # [N], what the per-task metrics describe
    if extras.task_normalizer is not None:
        import copy

        # evaluation batches use the running statistics without adding to them
        normalizer = extras.task_normalizer if mode == "train" else copy.deepcopy(extras.task_normalizer)
        rewards = normalizer.normalize(rewards, tasks, num_generations)

    token_rewards, token_reward_functions = gathered_token_rewards(
        trainer, rewards=rewards, rewards_per_func=rewards_per_func, weights=weights,
        completion_mask=completion_mask, full_mask=full_mask)
    estimator_inputs = AdvantageInputs(
        rewards=rewards, num_generations=num_generations, completion_lengths=lengths, completion_mask=scored_mask,
        rewards_per_func=rewards_per_func, reward_weights=weights,
        token_rewards=token_rewards, token_reward_functions=token_reward_functions,  # [N, T] or None (issue 22)
        values=gathered_values(trainer, full_mask),  # [N, T] the critic's V_old (value_function), else None
    )
    if num_generations == 1:  # evaluation only (TRL needs G >= 2 to train): no baseline, advantage 0
        result = torch.zeros_like(rewards)
    elif (trl_advantages is not None and extras.estimator_is_trls and not reward_specs
          and extras.task_normalizer is None and token_rewards is None):
        result = trl_advantages  # TRL just computed exactly this estimator inline (bitwise: tests/algorithms/test_estimators.py)
    elif hasattr(extras.estimator, "components_at"):  # a mix of estimators (logs each component)
        result = mixed_advantages(trainer, extras.estimator, estimator_inputs, None, {}, scored_mask,
                                  lambda values, mask, prefix: _log_advantage_metrics(trainer, mode, values, mask, prefix))
    else:
        result = call_estimator(extras.estimator, estimator_inputs, extras.estimator_options)
    if estimator_inputs.values is not None:  # the critic's targets with its own λ, and value/* metrics
        record_returns(trainer, estimator_inputs.outcome_token_rewards(), estimator_inputs.values, scored_mask,
                       lengths, _gae_options(extras))
    _log_advantage_metrics(trainer, mode, result, scored_mask)
    _log_reward_health(trainer, mode, rewards_per_func, num_generations, lengths)
    record_reward_distribution(trainer, mode, rewards_per_func)
    if tasks is not None:
        from grpo_custom.rewards.tasks import task_metrics

        per_sequence = (result if result.dim() == 1
                        else (result * scored_mask).sum(1) / scored_mask.sum(1).clamp(min=1))
        metrics = task_metrics(tasks, rewards_before_normalization, per_sequence, num_generations, lengths)
        for name, value in metrics.items():
            _log(trainer, mode, name, value)
    _log_reward_error_counts(trainer, mode)
    return result


def _reward_penalties(trainer, specs, completion_mask, ref_logps, old_logps, policy_logps_fn, mode,
                      prompt_ids=None, generated_lengths=None) -> torch.Tensor:
    """Σ coef · penalty over the reward-placed regularizers, gathered over processes: [N].

    The penalties read the log-probs of the policy that sampled the batch (``old_logps``, else one
    extra no-grad forward pass) and use the coefficients at the generation step. A zero coefficient
    subtracts nothing (not even a non-finite penalty). Logs ``regularizers/<name>/value``, ``/coef``
    and ``/reward_penalty``: the mean over the batch of the coef · penalty subtracted.
    """
    step = int(trainer.state.global_step)
    logps = None
    if any(spec.needs_reference for spec in specs):
        if old_logps is None:
            with torch.no_grad():
                old_logps = policy_logps_fn()
        logps = old_logps
    if prompt_ids is not None:  # Unsloth returns generation-time log-probs in its window layout
        from grpo_custom.algorithms.token_layout import window_to_completion

        pad_id = trainer.processing_class.pad_token_id
        width = completion_mask.shape[1]
        logps, old_logps, ref_logps = (None if values is None else window_to_completion(values, prompt_ids, pad_id, width)
                                       for values in (logps, old_logps, ref_logps))
    lengths = completion_mask.sum(dim=1) if generated_lengths is None else generated_lengths  # [B] tokens generated
    inputs = RegularizerInputs(
        logps=logps, old_logps=old_logps, ref_logps=ref_logps, mask=completion_mask.float(),
        advantages=None, entropies=None, model=None, completion_lengths=lengths,
    )
    total = None
    for spec in specs:
        coef = spec.coef_at(step)
        penalty, metrics = spec.compute(inputs)  # [B]
        weighted = trainer.accelerator.gather(torch.as_tensor(coef, dtype=penalty.dtype) * penalty)  # [N]
        if coef != 0.0:
            total = weighted if total is None else total + weighted
        _log_regularizer(trainer, mode, spec, coef, {**metrics, "reward_penalty": weighted.mean().item()})
    if total is None:
        return trainer.accelerator.gather(torch.zeros_like(lengths, dtype=torch.float32))
    return total


def _gathered_task_labels(inputs: list[dict], task_column: str) -> list[str]:
    """The task label of every completion of the (gathered) generation batch, checked: [N]."""
    from accelerate.utils import gather_object

    for index, example in enumerate(inputs):
        label = example.get(task_column)
        if not isinstance(label, str):
            found = f"task {label!r}" if task_column in example else f"no {task_column!r} column"
            raise ValueError(
                f"task_column={task_column!r}: sample {index} of the batch has {found}; every sample needs a "
                f"string task label (its columns: {sorted(example)})."
            )
    return gather_object([example[task_column] for example in inputs])

