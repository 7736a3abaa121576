"""Generalized advantage estimation over [N, T] token tensors, and VAPO's length-adaptive λ.

GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation", arXiv 1506.02438), in the token-level form of PPO for language models (verl
``compute_gae_advantage_return``): reading the completion backwards,

    δ_t = r_t + γ·V_next(t) − V_t,      A_t = δ_t + γλ·A_next(t),      R_t = A_t + V_t,

where ``next(t)`` is the next *scored* token (mask 1). A token with mask 0 (padding, or a tool's
output inside a completion) is skipped: it neither adds a TD error nor decays the running sum, and
the next value and the running advantage carry across it; its own advantage is the running one.
Past the last scored token V_next = 0 and A_next = 0.

How it runs (no Python loop over T). Skipping a token with mask 0 is the same as deleting it, so
each row's scored tokens are packed to the left (:func:`~.scan.pack_scored`; nothing to do when they
already lead every row, the GRPO layout), where GAE is A_k = Σ_{j≥k} (γλ)^{j−k}·δ_j with
δ_k = r_k + γ·V_{k+1} − V_k (:func:`~.scan.discounted_reverse_sum`: a matrix product per chunk of
64 tokens and a scan over the chunks), and each token reads back the packed advantage of the first
scored token at or after it. On CPU the call runs on one intra-op thread (:mod:`.scan` says why).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from grpo_custom.algorithms.estimators.scan import (
    discounted_reverse_sum,
    one_intra_op_thread,
    pack_scored,
    reverse_affine_scan,
)

__all__ = ["adaptive_lambda", "compute_gae", "reverse_affine_scan", "whiten_scored_tokens", "torch_distributed_sum"]

WHITEN_EPSILON = 1e-8  # added to the variance inside the rsqrt, as verl's masked_whiten


def torch_distributed_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Σ of ``tensor`` over the processes of the default torch.distributed group (a new tensor)."""
    total = tensor.clone()
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total


def _resolve_process_sum(process_sum):
    if process_sum == "auto":
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            return torch_distributed_sum
        return None
    if process_sum is not None and not callable(process_sum):
        raise TypeError(f"compute_gae: process_sum must be 'auto', None or a callable, got {process_sum!r}.")
    return process_sum


def whiten_scored_tokens(
    values: torch.Tensor, mask: torch.Tensor, process_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """(x − mean) · rsqrt(var + 1e-8) with mean and Bessel-corrected var over the scored tokens (verl's masked_whiten).

    Every position is shifted and scaled (unscored ones too; the loss masks them). As in verl, the means
    divide by (count + 1e-8): mean = Σx/(n + 1e-8), var = Σ(x − mean)²/(n + 1e-8) · n/(n − 1).

    Args:
        values: [N, T] float.
        mask: [N, T] bool, True for scored tokens.
        process_sum: None (statistics of this tensor only) or a function summing a tensor over
            processes (e.g. :func:`torch_distributed_sum`, or ``lambda t: accelerator.reduce(t, "sum")``):
            then the statistics are those of the scored tokens of every process.

    Raises:
        ValueError: fewer than two scored tokens in total (the unbiased variance is undefined).
    """
    weights = mask.to(values.dtype)
    sums = torch.stack([(values * weights).sum(), weights.sum()])  # [2]
    if process_sum is not None:
        sums = process_sum(sums)
    count = sums[1]
    if float(count) < 2:
        raise ValueError(
            f"compute_gae(whiten=True) needs at least 2 scored tokens (mask 1) in the batch, got {int(count)}."
        )
    # verl's masked_mean divides by (count + 1e-8); kept so the two agree to round-off
    mean = sums[0] / (count + WHITEN_EPSILON)
    squares = (((values - mean) ** 2) * weights).sum()
    if process_sum is not None:
        squares = process_sum(squares)
    variance = squares / (count + WHITEN_EPSILON) * (count / (count - 1))  # Bessel-corrected
    return (values - mean) * torch.rsqrt(variance + WHITEN_EPSILON)


def _check_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.shape != shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"compute_gae: mask must be a tensor of shape {tuple(shape)} (that of token_rewards), got {got}.")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("compute_gae: mask must contain only 0 and 1 (or be a bool tensor).")
        mask = mask != 0
    return mask


def _decay_per_row(name: str, value, rows: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A number or an [N] tensor in [0, 1] -> [N, 1] tensor."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(rows)
        if value.shape != (rows,):
            raise ValueError(f"compute_gae: {name} must be a number or a tensor of shape [{rows}], "
                             f"got shape {list(value.shape)}.")
        tensor = value.to(device=device, dtype=dtype)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        tensor = torch.full((rows,), float(value), dtype=dtype, device=device)
    else:
        raise TypeError(f"compute_gae: {name} must be a number in [0, 1] or an [N] tensor, got {value!r}.")
    if not bool(((tensor >= 0) & (tensor <= 1)).all()):
        raise ValueError(f"compute_gae: {name} must lie in [0, 1], got {value!r}.")
    return tensor.unsqueeze(1)  # [N, 1]


def compute_gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float | torch.Tensor = 1.0,
    lam: float | torch.Tensor = 1.0,
    whiten: bool = False,
    process_sum: Callable[[torch.Tensor], torch.Tensor] | str | None = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(γ, λ) advantages and returns per token (Schulman et al. 2016, arXiv 1506.02438).

    δ_t = r_t + γ·V_next(t) − V_t and A_t = δ_t + γλ·A_next(t) over the scored tokens (mask 1),
    read backwards; a token with mask 0 inside a completion is skipped (the next value and the
    running advantage carry across it and it takes the running advantage); R_t = A_t + V_t, before
    whitening. Equal to verl's ``compute_gae_advantage_return`` (which always whitens) to round-off.
    Runs without gradients (advantages and returns are targets). No Python loop over T (module
    docstring); on CPU the call runs on one intra-op thread, torch's count restored after it.
    A non-finite reward or value on a scored token makes its row's advantages non-finite.

    Args:
        token_rewards: [N, T] float reward on each token (an outcome reward on the last scored
            token); rewards on tokens with mask 0 are ignored.
        values: [N, T] V_t, the value of the state before token t.
        mask: [N, T] bool or 0/1: tokens that are scored.
        gamma: discount γ in [0, 1], a number or an [N] tensor.
        lam: GAE λ in [0, 1], a number or an [N] tensor (per sequence, e.g. :func:`adaptive_lambda`).
        whiten: whiten the advantages over the scored tokens of the whole batch:
            (A − mean)·rsqrt(var_unbiased + 1e-8); ``returns`` are not whitened.
        process_sum: how the whitening statistics span processes: ``"auto"`` (default) sums them over
            the torch.distributed default group when it is initialized with more than one process,
            None keeps them local (use it when the tensors already hold the gathered batch, as the
            ``gae`` estimator's do), or a callable summing a tensor over processes.

    Returns:
        (advantages, returns), both [N, T] in the dtype of ``token_rewards``.

    Raises:
        ValueError: shapes differ, the mask is not 0/1, γ or λ outside [0, 1], or fewer than two
            scored tokens with ``whiten=True``.
    """
    if not isinstance(token_rewards, torch.Tensor) or token_rewards.dim() != 2 or not token_rewards.is_floating_point():
        got = (f"{token_rewards.dtype} tensor of shape {tuple(token_rewards.shape)}"
               if isinstance(token_rewards, torch.Tensor) else type(token_rewards).__name__)
        raise ValueError(f"compute_gae: token_rewards must be a float [N, T] tensor, got {got}.")
    if not isinstance(values, torch.Tensor) or values.shape != token_rewards.shape:
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"compute_gae: values must have the shape of token_rewards {tuple(token_rewards.shape)}, "
                         f"got {got}.")
    scored = _check_mask(mask, token_rewards.shape)  # [N, T] bool
    process_sum = _resolve_process_sum(process_sum)
    rows = token_rewards.shape[0]
    dtype, device = token_rewards.dtype, token_rewards.device
    with torch.no_grad(), one_intra_op_thread(device) as workspace:
        values = values.detach().to(dtype=dtype, device=device)
        scored = scored.to(device)
        gammas = _decay_per_row("gamma", gamma, rows, dtype, device)  # [N, 1]
        lams = _decay_per_row("lam", lam, rows, dtype, device)  # [N, 1]
        positions = pack_scored(scored, workspace)  # [N, T] packed position of each token, None if already packed
        # r and V with the unscored tokens zeroed (a NaN reward or value there is dropped), then packed
        shape, length, zero = tuple(values.shape), values.shape[1], values.new_zeros(())
        deltas, packed_values = workspace.take("rewards", shape, dtype), workspace.take("values", shape, dtype)
        if positions is None:
            torch.where(scored, token_rewards.detach(), zero, out=deltas)  # [N, T]
            torch.where(scored, values, zero, out=packed_values)  # [N, T]
        else:  # scored tokens to their packed slots, the others to the last slot, emptied after: it is past the
            # packed tokens of every row that has a token with mask 0 (the order of duplicate writes does not matter)
            slots = torch.where(scored, positions, positions.new_tensor(length - 1),
                                out=workspace.take("slots", shape, torch.int64))  # [N, T]
            deltas.zero_().scatter_(1, slots, token_rewards.detach())  # [N, T] packed rewards
            packed_values.zero_().scatter_(1, slots, values)  # [N, T] packed values
            partial = (positions[:, -1] + scored[:, -1]) < length  # [N] rows with a token of mask 0
            deltas[:, -1].masked_fill_(partial, 0.0)
            packed_values[:, -1].masked_fill_(partial, 0.0)
        # δ_k = r_k + γ·V_{k+1} − V_k over the packed tokens (V past the last one = 0)
        deltas.sub_(packed_values)[:, :-1].addcmul_(gammas, packed_values[:, 1:])
        if positions is None:
            advantages = discounted_reverse_sum(deltas, gammas * lams, out=torch.empty_like(values))  # [N, T]
        else:  # A_t = A at the first scored token at or after t (0 past the last)
            packed = discounted_reverse_sum(deltas, gammas * lams, out=workspace.take("sums", shape, dtype))  # packed A
            advantages = torch.gather(packed, 1, positions)
        returns = advantages + values  # [N, T]
        if whiten:
            advantages = whiten_scored_tokens(advantages, scored, process_sum)
    return advantages, returns


def adaptive_lambda(lengths: torch.Tensor, alpha: float = 0.05) -> torch.Tensor:
    """λ_i = clamp(1 − 1/(α·l_i), 0, 1): VAPO's length-adaptive policy λ (Yue et al. 2025, arXiv 2504.05118).

    Chosen so that Σ_t λ^t ≈ α·l: long completions get λ near 1 (little bias over long horizons),
    short ones a smaller λ. Below 1/α tokens (20 for α = 0.05) the formula is negative and is
    clamped to 0; a length of 0 gives 0.

    Args:
        lengths: [N] completion lengths in tokens (any real or integer dtype), >= 0.
        alpha: α > 0.

    Returns:
        [N] float λ (float32 for integer lengths, else the dtype of ``lengths``).

    Raises:
        ValueError: a negative or non-finite length, or α not a finite number > 0.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"adaptive_lambda: alpha must be a finite number > 0, got {alpha!r}.")
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"adaptive_lambda: lengths must be a [N] tensor, got {got}.")
    lengths = lengths.to(lengths.dtype if lengths.is_floating_point() else torch.float32)
    if bool((lengths < 0).any()) or not bool(torch.isfinite(lengths).all()):
        bad = int(torch.nonzero((lengths < 0) | ~torch.isfinite(lengths))[0])
        raise ValueError(f"adaptive_lambda: lengths must be finite and >= 0; sequence {bad} has {lengths[bad].item()}.")
    scaled = alpha * lengths  # [N]
    lam = torch.where(scaled > 0, 1.0 - 1.0 / scaled.clamp(min=torch.finfo(lengths.dtype).tiny), torch.zeros_like(scaled))
    return lam.clamp(0.0, 1.0)


def _register_gae_estimator() -> None:
    """Register ``"gae"`` (called when :mod:`grpo_custom.algorithms.estimators` is imported, after the built-ins)."""
    from grpo_custom.algorithms.estimators.inputs import AdvantageInputs
    from grpo_custom.algorithms.estimators.registry import ADVANTAGE_ESTIMATORS, register_advantage_estimator

    if "gae" in ADVANTAGE_ESTIMATORS:
        return

    @register_advantage_estimator("gae")
    def gae_advantages(
        inputs: AdvantageInputs,
        *,
        epsilon: float = 1e-4,
        gamma: float = 1.0,
        lam: float | str = 1.0,
        alpha: float = 0.05,
        whiten: bool = True,
    ) -> torch.Tensor:
        """A_t = δ_t + γλ·A_next, δ_t = r_t + γ·V_next − V_t over the completion tokens (GAE, arXiv 1506.02438).

        The policy's advantages from a learned value function (PPO's estimator, as verl's ``gae``):
        :func:`compute_gae` on ``inputs.outcome_token_rewards()`` (each completion's reward on its last
        scored token, or the token-level rewards a reward function returned) and ``inputs.values``,
        then whitened over the scored tokens of the batch. ``lam="adaptive"`` uses VAPO's
        λ_i = 1 − 1/(α·l_i) per completion (:func:`adaptive_lambda`, l = completion length). An
        unscorable completion (NaN reward) gets advantage 0 and leaves the whitening statistics.
        The critic's own λ (VC-PPO: 1.0) is the value function's setting, not this one.

        Args:
            inputs: the batch; needs ``completion_mask`` [N, T] and ``values`` [N, T].
            epsilon: unused (the common keyword; whitening adds 1e-8 to the variance, as verl).
            gamma: discount γ in [0, 1].
            lam: λ in [0, 1], or ``"adaptive"``.
            alpha: α of ``lam="adaptive"``.
            whiten: whiten the advantages over the batch's scored tokens (verl always does).

        Returns:
            [N, T] advantages (0 on padding and on unscorable completions).

        Raises:
            ValueError: no values (no value function configured: set ``GRPOConfig(value_function=...)``),
                no completion mask, or a bad option.
        """
        mask = inputs.require("completion_mask", "gae")
        values = inputs.require("values", "gae", hint="It reads the learned value function's V(s_t): set "
                                "GRPOConfig(value_function=...) (docs/value_function.md).")
        if not isinstance(whiten, bool):
            raise ValueError(f"Advantage estimator 'gae': option whiten must be True or False, got {whiten!r}.")
        rewards = inputs.rewards
        scored = mask.to(torch.bool) & ~torch.isnan(rewards).unsqueeze(1).to(mask.device)  # [N, T]
        if lam == "adaptive":
            lengths = inputs.completion_lengths if inputs.completion_lengths is not None else mask.sum(dim=1)
            lam = adaptive_lambda(lengths.to(rewards.device), alpha)
        elif isinstance(lam, str):
            raise ValueError(f"Advantage estimator 'gae': option lam must be a number in [0, 1] or 'adaptive', "
                             f"got {lam!r}.")
        token_rewards = inputs.outcome_token_rewards().to(rewards.dtype)  # [N, T]
        advantages, _ = compute_gae(token_rewards, values.to(token_rewards), scored, gamma=gamma, lam=lam,
                                    whiten=whiten, process_sum=None)
        return torch.where(scored, advantages, 0.0)

    gae_advantages.uses_token_rewards = True
