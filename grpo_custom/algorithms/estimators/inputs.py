"""What an advantage estimator reads: :class:`AdvantageInputs`, one object instead of six keyword arguments.

An estimator written to the inputs contract is ``estimator(inputs, *, <own options>) -> Tensor`` (its
first parameter is named ``inputs``); one written to the keyword contract of
:mod:`grpo_custom.algorithms.estimators.registry` keeps working, and :func:`~.registry.call_estimator`
calls either kind. Inputs beyond the keyword contract (per-token rewards, values) reach only estimators
written to the inputs contract.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The data of the keyword contract, in the order the trainer has always passed them.
KEYWORD_DATA = ("completion_lengths", "completion_mask", "rewards_per_func", "reward_weights")
# Data only estimators written to the inputs contract can read.
INPUTS_ONLY_DATA = ("token_rewards", "token_reward_functions", "values")


@dataclass(kw_only=True)
class AdvantageInputs:
    """The batch an advantage estimator sees; N = num_prompts × G completions in TRL's group layout.

    Args:
        rewards: [N] weighted total reward per completion (TRL's sum over reward functions), NaN
            for a completion no reward function could score.
        num_generations: G, completions per prompt; completion ``i`` is in group ``i // G``.
        completion_lengths: [N] tokens generated per completion, or None.
        completion_mask: [N, T] 0/1 (or bool) mask of the scored completion tokens, or None.
        rewards_per_func: [N, F] reward of each reward function (NaN where it did not score), or None.
        reward_weights: [F] weight of each reward function, or None.
        token_rewards: [N, T] weighted per-token rewards, present when a reward function returned
            token-level rewards (``grpo_custom.rewards.token_rewards``); scalar rewards of the other
            functions sit on each completion's last scored token. None otherwise.
        token_reward_functions: names of the reward functions that returned token-level rewards
            (for error messages).
        values: [N, T] value V_t of the state before token t from the value function (no grad),
            aligned with ``completion_mask``; None when no value function is configured.
    """

    rewards: torch.Tensor
    num_generations: int
    completion_lengths: torch.Tensor | None = None
    completion_mask: torch.Tensor | None = None
    rewards_per_func: torch.Tensor | None = None
    reward_weights: torch.Tensor | None = None
    token_rewards: torch.Tensor | None = None
    token_reward_functions: tuple[str, ...] = field(default=())
    values: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("token_rewards", "values"):
            tensor = getattr(self, name)
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"AdvantageInputs.{name} must be an [N, T] tensor, got {got}.")
            if self.completion_mask is not None and tensor.shape != self.completion_mask.shape:
                raise ValueError(f"AdvantageInputs.{name} has shape {tuple(tensor.shape)}, expected the "
                                 f"completion mask's {tuple(self.completion_mask.shape)}.")
            if isinstance(self.rewards, torch.Tensor) and tensor.shape[0] != self.rewards.numel():
                raise ValueError(f"AdvantageInputs.{name} has {tensor.shape[0]} rows for "
                                 f"{self.rewards.numel()} rewards.")
        self.token_reward_functions = tuple(self.token_reward_functions)

    def keyword_data(self) -> dict:
        """The keyword-contract data as a dict (what a keyword-contract estimator receives)."""
        return {name: getattr(self, name) for name in KEYWORD_DATA}

    def require(self, name: str, estimator: str, hint: str = "") -> torch.Tensor:
        """Field ``name``; a ValueError naming ``estimator`` (and ``hint``) when it is None."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"Advantage estimator {estimator!r} needs inputs.{name}, which is None."
                             + (f" {hint}" if hint else ""))
        return value

    def outcome_token_rewards(self) -> torch.Tensor:
        """[N, T] per-token rewards: ``token_rewards`` when given, else each completion's reward on its last
        scored token (0 elsewhere); an unscorable completion (NaN reward) gets 0 everywhere.

        Raises:
            ValueError: no ``completion_mask`` (the tokens are unknown).
        """
        mask = self.require("completion_mask", "outcome_token_rewards")
        if self.token_rewards is not None:
            return torch.nan_to_num(self.token_rewards.to(self.rewards.dtype), nan=0.0)
        return place_on_last_token(self.rewards, mask)


def place_on_last_token(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] rewards → [N, T] with ``rewards[i]`` on row i's last scored token (mask 1), 0 elsewhere.

    A row without scored tokens, or with a NaN reward, is all 0.

    Args:
        rewards: [N] float.
        mask: [N, T] 0/1 or bool.
    """
    scored = mask.to(torch.bool)  # [N, T]
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)  # [T]
    last = (positions * scored).amax(dim=1) - 1  # [N], −1 for a row with no scored token
    placed = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)  # [N, T]
    rows = torch.nonzero(last >= 0).squeeze(1)
    placed[rows, last[rows]] = torch.nan_to_num(rewards.to(placed.device)[rows], nan=0.0)
    return placed
