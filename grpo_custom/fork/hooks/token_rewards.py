"""Token-level rewards in the advantage hook: the reward functions' side records → one gathered [N, T] tensor."""
from __future__ import annotations

import torch

from grpo_custom.algorithms.estimators.inputs import place_on_last_token


def gathered_token_rewards(trainer, *, rewards: torch.Tensor, rewards_per_func: torch.Tensor, weights: torch.Tensor,
                           completion_mask: torch.Tensor, full_mask: torch.Tensor):
    """``(token_rewards [N, T] or None, names of the functions that returned them)`` for the gathered batch.

    Each guarded reward function keeps the token-level rewards of its last call on the side
    (``wrapper.token_level``, see :mod:`grpo_custom.rewards.token_rewards`; TRL got their sums). With
    F_tok the functions that returned any this step (on any process):

        token_rewards = Σ_{f ∈ F_tok} w_f · tokens_f  +  (r − Σ_{f ∈ F_tok} w_f · r_f) on the last scored token,

    where r [N] is the reward the estimator sees (after reward-placed penalties and task normalization) and
    r_f the sums TRL recorded: each row adds up to r_i, the outcome part stays a scalar on the last token.
    The side records are cleared after reading.

    Args:
        trainer: the GRPO trainer (``reward_funcs``, ``accelerator``, ``processing_class``).
        rewards: [N] gathered rewards. rewards_per_func: [N, F] gathered. weights: [F].
        completion_mask: [B, T_local] this process's mask. full_mask: [N, T] gathered mask.
    """
    batches = []
    for func in getattr(trainer, "reward_funcs", []):
        batch = getattr(func, "token_level", None)
        if batch is not None:
            func.token_level = None
        batches.append(batch)
    accelerator = trainer.accelerator
    device = rewards.device
    present = torch.tensor([batch is not None for batch in batches], dtype=torch.float32, device=completion_mask.device)
    if accelerator.num_processes > 1:
        present = accelerator.reduce(present, reduction="sum")
    present = present.to(device) > 0  # [F] functions with token rewards on some process
    if not bool(present.any()):
        return None, ()
    from grpo_custom.rewards.token_rewards import place_token_rewards

    processing = trainer.processing_class
    tokenizer = getattr(processing, "tokenizer", processing)
    rows, width = completion_mask.shape
    local = torch.zeros(rows, width, dtype=torch.float64, device=completion_mask.device)  # [B, T_local]
    for index, batch in enumerate(batches):
        if batch is not None:
            placed = place_token_rewards(batch, rows, width, tokenizer, dtype=torch.float64)
            local += weights[index].to(local.device, torch.float64) * placed.to(local.device)
    if accelerator.num_processes > 1:
        local = accelerator.gather(accelerator.pad_across_processes(local, dim=1, pad_index=0))
    token_part = local.to(device=device, dtype=rewards.dtype)[:, : full_mask.shape[1]]  # [N, T]
    if token_part.shape[1] < full_mask.shape[1]:
        token_part = torch.nn.functional.pad(token_part, (0, full_mask.shape[1] - token_part.shape[1]))
    token_sums = (torch.nan_to_num(rewards_per_func[:, present], nan=0.0) * weights[present].to(device)).sum(dim=1)
    outcome = place_on_last_token(rewards - token_sums.to(rewards.dtype), full_mask)  # [N, T]
    names = [name for name, flag in zip(trainer.reward_func_names, present.tolist()) if flag]
    return token_part + outcome, tuple(names)
