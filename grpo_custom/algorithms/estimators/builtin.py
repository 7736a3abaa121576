"""The built-in advantage estimators (grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline, opo,
grpo_passk, gdpo) and the input checks they share; the contract is in :mod:`.registry`."""
from __future__ import annotations

import math

import torch
from trl.trainer.utils import nanstd

from grpo_custom.algorithms.estimators.inputs import AdvantageInputs
from grpo_custom.algorithms.estimators.registry import register_advantage_estimator

# ---------------------------------------------------------------------------------------------
# Input checks shared by the built-ins
# ---------------------------------------------------------------------------------------------


def _check_rewards(name: str, rewards: torch.Tensor, num_generations: int, min_generations: int = 1) -> None:
    """Reject rewards that are not a float [N] tensor, a bad G, N % G != 0, or G < min_generations."""
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1 or not rewards.is_floating_point():
        description = (
            f"{rewards.dtype} tensor of shape {tuple(rewards.shape)}"
            if isinstance(rewards, torch.Tensor)
            else type(rewards).__name__
        )
        raise TypeError(f"Advantage estimator {name!r}: rewards must be a 1-D float tensor [N], got {description}.")
    if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"Advantage estimator {name!r}: num_generations must be an int >= 1, got {num_generations!r}.")
    if num_generations < min_generations:
        raise ValueError(
            f"Advantage estimator {name!r} needs at least {min_generations} completions per group, "
            f"got num_generations={num_generations}."
        )
    if rewards.numel() % num_generations != 0:
        raise ValueError(
            f"Advantage estimator {name!r}: the number of completions N={rewards.numel()} is not divisible "
            f"by num_generations={num_generations}."
        )


def _check_epsilon(name: str, epsilon: float) -> None:
    """Reject an epsilon that is not a finite number > 0 (a zero epsilon turns zero spread into inf)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"Advantage estimator {name!r}: epsilon must be a finite number > 0, got {epsilon!r}.")


def _require(name: str, input_name: str, value: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """Return ``value`` after checking it is given and a tensor of ``shape`` (-1 = any size)."""
    if value is None:
        raise ValueError(f"Advantage estimator {name!r} needs {input_name}, but it is None.")
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"Advantage estimator {name!r}: {input_name} must be a tensor, got {type(value).__name__}.")
    if value.dim() != len(shape) or any(want not in (-1, got) for want, got in zip(shape, value.shape)):
        expected = "[" + ", ".join("*" if size == -1 else str(size) for size in shape) + "]"
        raise ValueError(
            f"Advantage estimator {name!r}: {input_name} must have shape {expected}, got {list(value.shape)}."
        )
    return value


def _group_mean(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """NaN-aware mean of each group, broadcast back to [N]."""
    grouped = rewards.view(-1, num_generations)  # [P, G]
    return torch.nanmean(grouped, dim=1, keepdim=True).expand_as(grouped).reshape(-1)  # [N]


def _whiten(values: torch.Tensor, epsilon: float) -> torch.Tensor:
    """(x − nanmean(x)) / (nanstd(x) + ε) over every element of ``values``."""
    return (values - torch.nanmean(values)) / (nanstd(values) + epsilon)


# ---------------------------------------------------------------------------------------------
# Built-in estimators
# ---------------------------------------------------------------------------------------------


@register_advantage_estimator("grpo")
def grpo_advantages(
    inputs: AdvantageInputs,
    *,
    epsilon: float = 1e-4,
    scale_rewards: str | bool = "group",
) -> torch.Tensor:
    """A_i = (r_i − mean_g) / (std_g + ε)  (GRPO, Shao et al. 2024, arXiv 2402.03300).

    Bit-identical to TRL 1.15's ``sum_then_normalize`` advantages: NaN-aware group mean, Bessel
    std per group (``"group"``) or over the whole batch (``"batch"``), no division for ``"none"``
    (then A_i = r_i − mean_g), NaN → 0.

    Args:
        inputs: the batch (:class:`AdvantageInputs`): rewards [N] (NaN = unscorable), num_generations G.
        epsilon: ε added to the std.
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"``; ``True`` means ``"group"`` and
            ``False`` means ``"none"``, as in TRL.

    Returns:
        [N] advantages, dtype and device of ``rewards``.
    """
    rewards, num_generations = inputs.rewards, inputs.num_generations
    if scale_rewards is True or scale_rewards is False:
        scale_rewards = "group" if scale_rewards else "none"
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(
            f"Advantage estimator 'grpo': option scale_rewards must be 'group', 'batch', 'none', True or False, "
            f"got {scale_rewards!r}."
        )
    _check_rewards("grpo", rewards, num_generations, min_generations=2 if scale_rewards == "group" else 1)
    _check_epsilon("grpo", epsilon)
    centered = rewards - _group_mean(rewards, num_generations)  # [N]
    if scale_rewards == "none":
        return torch.nan_to_num(centered, nan=0.0)
    if scale_rewards == "group":
        grouped_std = nanstd(rewards.view(-1, num_generations), dim=1)  # [P]
        std = grouped_std.repeat_interleave(num_generations)  # [N]
    else:
        std = nanstd(rewards).expand_as(rewards)  # [N]
    return torch.nan_to_num(centered / (std + epsilon), nan=0.0)


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(
    inputs: AdvantageInputs,
    *,
    epsilon: float = 1e-4,
) -> torch.Tensor:
    """A_i = r_i − mean_g  (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783: no std division).

    Args:
        inputs: the batch (:class:`AdvantageInputs`): rewards [N] (NaN = unscorable), num_generations G.
        epsilon: unused (the common keyword).

    Returns:
        [N] advantages; the scorable advantages of each group sum to 0.
    """
    rewards, num_generations = inputs.rewards, inputs.num_generations
    _check_rewards("dr_grpo", rewards, num_generations)
    return torch.nan_to_num(rewards - _group_mean(rewards, num_generations), nan=0.0)


@register_advantage_estimator("rloo")
def rloo_advantages(
    inputs: AdvantageInputs,
    *,
    epsilon: float = 1e-4,
) -> torch.Tensor:
    """A_i = r_i − mean_{j≠i} r_j = n/(n−1) · (r_i − mean_g)  (RLOO, Ahmadian et al. 2024, arXiv 2402.14740).

    n is the number of scorable (non-NaN) completions in the group; a group with fewer than two
    scorable completions has no leave-one-out baseline and gets advantage 0.

    Args:
        inputs: the batch (:class:`AdvantageInputs`): rewards [N] (NaN = unscorable), num_generations G.
        epsilon: unused (the common keyword).

    Returns:
        [N] advantages; the scorable advantages of each group sum to 0.
    """
    rewards, num_generations = inputs.rewards, inputs.num_generations
    _check_rewards("rloo", rewards, num_generations, min_generations=2)
    grouped = rewards.view(-1, num_generations)  # [P, G]
    scorable = (~torch.isnan(grouped)).sum(dim=1, keepdim=True).to(rewards.dtype)  # [P, 1]
    leave_one_out_scale = torch.where(scorable > 1, scorable / (scorable - 1), torch.nan)  # [P, 1]
    centered = grouped - torch.nanmean(grouped, dim=1, keepdim=True)  # [P, G]
    return torch.nan_to_num((leave_one_out_scale * centered).reshape(-1), nan=0.0)


@register_advantage_estimator("reinforce_pp")
def reinforce_pp_advantages(
    inputs: AdvantageInputs,
    *,
    epsilon: float = 1e-4,
    gamma: float = 1.0,
) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): batch-whitened rewards, no per-group baseline.

    gamma = 1: A_i = (r_i − mean_batch) / (std_batch + ε), sequence level, shape [N].
    gamma < 1: token level. The reward sits on the last valid token, so the return-to-go is
    A_{i,t} = γ^(L_i − 1 − t) · r_i for valid tokens t (L_i = index of the last valid token + 1,
    the valid length for a right-padded mask), 0 on padding; it is then whitened over all valid
    tokens of the batch ((A − mean) / (std + ε)) and padding stays 0. With token-level rewards
    (``inputs.token_rewards``, see ``grpo_custom.rewards.token_rewards``) the return-to-go is
    A_{i,t} = Σ_{s ≥ t} γ^(k(t, s)) · r_{i,s} over the valid tokens, k counting the valid tokens
    from t to s (GAE with V = 0 and λ = 1, :func:`~.gae.compute_gae`); an unscorable completion
    (NaN reward) stays 0 and leaves the statistics. gamma = 1 with token-level rewards is an error
    (the sequence-level form reads one reward per completion).

    Args:
        inputs: the batch (:class:`AdvantageInputs`): rewards [N] (NaN = unscorable), num_generations G.
        inputs.completion_mask: [N, T] 0/1 mask of completion tokens; needed when gamma < 1.
        epsilon: ε added to the std.
        gamma: discount in [0, 1].

    Returns:
        [N] advantages for gamma = 1, [N, T] for gamma < 1; dtype and device of ``rewards``.
    """
    rewards, num_generations = inputs.rewards, inputs.num_generations
    _check_rewards("reinforce_pp", rewards, num_generations)
    _check_epsilon("reinforce_pp", epsilon)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"Advantage estimator 'reinforce_pp': option gamma must be a number in [0, 1], got {gamma!r}.")
    if gamma == 1.0:
        if inputs.token_rewards is not None:
            sources = ", ".join(repr(name) for name in inputs.token_reward_functions) or "a reward function"
            raise ValueError(f"Reward function {sources} returned token-level rewards, which advantage estimator "
                             f"'reinforce_pp' uses only with gamma < 1 (got gamma=1.0); set "
                             f"advantage_estimator_kwargs={{'gamma': ...}} below 1 or use 'gae'.")
        return torch.nan_to_num(_whiten(rewards, epsilon), nan=0.0)

    mask = _require("reinforce_pp", "completion_mask", inputs.completion_mask, (rewards.numel(), -1))
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("Advantage estimator 'reinforce_pp': completion_mask must contain only 0 and 1.")
    valid = mask.bool()  # [N, T]
    if inputs.token_rewards is not None:
        from grpo_custom.algorithms.estimators.gae import compute_gae

        token_rewards = torch.nan_to_num(inputs.token_rewards.to(rewards.dtype), nan=0.0)  # [N, T]
        returns, _ = compute_gae(token_rewards, torch.zeros_like(token_rewards), valid, gamma=gamma, lam=1.0)
        returns = torch.where(valid & ~torch.isnan(rewards).unsqueeze(1), returns, torch.nan)  # [N, T]
        whitened = (returns - torch.nanmean(returns)) / (nanstd(returns) + epsilon)  # [N, T]
        return torch.nan_to_num(whitened, nan=0.0)
    positions = torch.arange(1, mask.shape[1] + 1, device=rewards.device)  # [T]
    valid_ends = (positions * valid).amax(dim=1, keepdim=True)  # [N, 1] last valid index + 1
    steps_to_end = (valid_ends - positions).clamp(min=0).to(rewards.dtype)  # [N, T] = L − 1 − t
    discount = torch.pow(torch.tensor(gamma, dtype=rewards.dtype, device=rewards.device), steps_to_end)  # [N, T]
    returns = torch.where(valid, discount * rewards.unsqueeze(1), torch.nan)  # [N, T] NaN on padding
    whitened = (returns - torch.nanmean(returns)) / (nanstd(returns) + epsilon)  # [N, T] stats of valid tokens
    return torch.nan_to_num(whitened, nan=0.0)


reinforce_pp_advantages.uses_token_rewards = True  # with gamma < 1


@register_advantage_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(
    inputs: AdvantageInputs,
    *,
    epsilon: float = 1e-4,
) -> torch.Tensor:
    """d_i = r_i − mean_g, then A_i = (d_i − mean_batch(d)) / (std_batch(d) + ε).

    REINFORCE++ with a group baseline (Hu 2025, arXiv 2501.03262): the group mean removes the
    prompt's difficulty, the batch whitening fixes the scale.

    Args:
        inputs: the batch (:class:`AdvantageInputs`): rewards [N] (NaN = unscorable), num_generations G.
        epsilon: ε added to the std.

    Returns:
        [N] advantages.
    """
    rewards, num_generations = inputs.rewards, inputs.num_generations
    _check_rewards("reinforce_pp_baseline", rewards, num_generations)
    _check_epsilon("reinforce_pp_baseline", epsilon)
    centered = rewards - _group_mean(rewards, num_generations)  # [N]
    return torch.nan_to_num(_whiten(centered, epsilon), nan=0.0)


@register_advantage_estimator("opo")
def opo_advantages(
    inputs: AdvantageInputs,
    *,
    epsilon: float = 1e-4,
) -> torch.Tensor:
    """A_i = r_i − Σ_g |o_j|·r_j / Σ_g |o_j|  (OPO, Hao et al. 2025, arXiv 2505.23585).

    The baseline is the length-weighted mean reward of the group, over its scorable completions
    (|o| = number of completion tokens). A group whose scorable completions all have length 0
    has no baseline and gets advantage 0.

    Args:
        inputs: the batch (:class:`AdvantageInputs`): rewards [N] (NaN = unscorable), num_generations G.
        inputs.completion_lengths: [N] non-negative completion lengths (any real or integer dtype).

    Returns:
        [N] advantages; Σ_g |o_i|·A_i = 0 over the scorable completions of each group.
    """
    rewards, num_generations = inputs.rewards, inputs.num_generations
    _check_rewards("opo", rewards, num_generations)
    lengths = _require("opo", "completion_lengths", inputs.completion_lengths, (rewards.numel(),))
    lengths = lengths.to(device=rewards.device, dtype=rewards.dtype)
    if bool((lengths < 0).any()) or not bool(torch.isfinite(lengths).all()):
        bad = int(torch.nonzero((lengths < 0) | ~torch.isfinite(lengths))[0])
        raise ValueError(
            f"Advantage estimator 'opo': completion_lengths must be finite and >= 0; "
            f"completion {bad} has length {lengths[bad].item()}."
        )
    grouped = rewards.view(-1, num_generations)  # [P, G]
    weights = torch.where(torch.isnan(grouped), torch.zeros_like(grouped), lengths.view(-1, num_generations))
    baseline = (weights * grouped).nansum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)  # [P, 1]
    return torch.nan_to_num((grouped - baseline).reshape(-1), nan=0.0)


@register_advantage_estimator("grpo_passk")
def grpo_passk_advantages(
    inputs: AdvantageInputs,
    *,
    epsilon: float = 1e-4,
) -> torch.Tensor:
    """A_i = (max_g r − max_{j≠i} r_j) / (std_g + ε): only the best completion gets (r_max − r_2nd)/(std_g + ε).

    The leave-one-out advantage of the group maximum (the k = G case of max@k training; see
    PKPO, Walder & Karkhanis 2025, arXiv 2505.15201), scaled like GRPO. Every completion but the
    best gets 0; on a tie the first maximal index is the best and gets r_max − r_2nd = 0.
    Unscorable completions take no part; a group with fewer than two scorable ones gets 0.

    Args:
        inputs: the batch (:class:`AdvantageInputs`): rewards [N] (NaN = unscorable), num_generations G.
        epsilon: ε added to the std.

    Returns:
        [N] advantages, at most one non-zero per group.
    """
    rewards, num_generations = inputs.rewards, inputs.num_generations
    _check_rewards("grpo_passk", rewards, num_generations, min_generations=2)
    _check_epsilon("grpo_passk", epsilon)
    grouped = rewards.view(-1, num_generations)  # [P, G]
    ranked = torch.nan_to_num(grouped, nan=-torch.inf)  # [P, G] NaN ranks last
    best = ranked.argmax(dim=1, keepdim=True)  # [P, 1] first maximal index
    best_value = ranked.gather(1, best)  # [P, 1]
    runner_up = ranked.scatter(1, best, -torch.inf).amax(dim=1, keepdim=True)  # [P, 1]
    gap = (best_value - runner_up) / (nanstd(grouped, dim=1, keepdim=True) + epsilon)  # [P, 1]
    advantages = torch.zeros_like(grouped).scatter(1, best, gap)  # [P, G]
    return torch.nan_to_num(advantages.reshape(-1), nan=0.0)


@register_advantage_estimator("gdpo")
def gdpo_advantages(
    inputs: AdvantageInputs,
    *,
    epsilon: float = 1e-4,
) -> torch.Tensor:
    """s_i = Σ_k w_k · (r_ik − mean_g,k) / (std_g,k + ε), then A_i = (s_i − mean_batch) / (std_batch + ε).

    Normalize-then-sum over reward functions (GDPO, arXiv 2601.05242), bit-identical to TRL
    1.15's ``multi_objective_aggregation="normalize_then_sum"`` advantages: per-function group
    z-scores (NaN-aware; a function that did not score is skipped in the weighted sum), a
    completion no function scored is unscorable (advantage 0), then a batch z-score.

    Args:
        rewards: [N] only its shape, dtype and device are used.
        inputs.rewards_per_func: [N, F] reward of each function, NaN where a function did not score.
        inputs.reward_weights: [F] weight of each function.
        epsilon: ε added to both stds.

    Returns:
        [N] advantages, dtype of ``rewards``.
    """
    rewards, num_generations = inputs.rewards, inputs.num_generations
    _check_rewards("gdpo", rewards, num_generations, min_generations=2)
    _check_epsilon("gdpo", epsilon)
    per_func = _require("gdpo", "rewards_per_func", inputs.rewards_per_func, (rewards.numel(), -1))
    num_funcs = per_func.shape[1]
    weights = _require("gdpo", "reward_weights", inputs.reward_weights, (num_funcs,)).to(per_func.device)
    grouped = per_func.view(-1, num_generations, num_funcs)  # [P, G, F]
    z_scores = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (
        nanstd(grouped, dim=1, keepdim=True) + epsilon
    )  # [P, G, F]
    summed = (z_scores.view(-1, num_funcs) * weights.unsqueeze(0)).nansum(dim=1)  # [N]
    summed[torch.isnan(per_func).all(dim=1)] = torch.nan
    return torch.nan_to_num(_whiten(summed, epsilon), nan=0.0).to(rewards.dtype)
