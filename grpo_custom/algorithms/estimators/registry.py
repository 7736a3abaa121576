"""Pluggable advantage estimators: pure functions from rewards to advantages, registered by name.

Every estimator follows one contract::

    estimator(rewards, num_generations, *, completion_lengths=None, completion_mask=None,
              rewards_per_func=None, reward_weights=None, epsilon=1e-4, <own options>) -> Tensor

Completions are laid out as TRL lays them out: N = num_prompts × G, and completion ``i`` belongs
to group ``i // G`` (consecutive blocks of G = ``num_generations``). ``rewards`` holds the weighted
total per completion, NaN for a completion no reward function could score. Statistics ignore NaN
(``torch.nanmean`` and TRL's Bessel-corrected ``nanstd``) and every estimator ends with
``torch.nan_to_num(advantages, nan=0.0)``, as TRL 1.15 does: unscorable completions, and groups
whose spread is undefined, get advantage 0. Options are explicit keyword-only parameters, so
:func:`validate_estimator_options` can reject a misspelled option when the config is built.

The built-in estimators are in :mod:`grpo_custom.algorithms.estimators.builtin`.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from grpo_custom.algorithms.registry import Registry

ADVANTAGE_ESTIMATORS = Registry("advantage estimator")

# Data the trainer passes to every estimator (rewards and num_generations positionally, the rest
# by keyword); options may not use these names. ``epsilon`` is a common keyword an option may set.
TRAINER_INPUTS = (
    "rewards", "num_generations", "completion_lengths", "completion_mask", "rewards_per_func", "reward_weights"
)
COMMON_KEYWORDS = TRAINER_INPUTS[2:] + ("epsilon",)


def register_advantage_estimator(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering an advantage estimator under ``name`` (duplicates are rejected)."""
    return ADVANTAGE_ESTIMATORS.register(name)


def get_advantage_estimator(name: str) -> Callable:
    """Return the estimator registered as ``name``; an unknown name's error lists the valid ones."""
    return ADVANTAGE_ESTIMATORS.get(name)


def list_advantage_estimators() -> list[str]:
    """Names of all registered advantage estimators, in registration order."""
    return ADVANTAGE_ESTIMATORS.names()


def validate_estimator_options(estimator: str | Callable, options: dict) -> None:
    """Check at config time that ``estimator`` accepts the common inputs plus ``options``.

    The check binds the estimator's signature to placeholder inputs (it never calls it).
    ``epsilon`` may be given as an option; the data inputs (``rewards``, ``completion_mask``, ...)
    may not, since the trainer supplies them.

    Args:
        estimator: a registered name or a callable following the estimator contract.
        options: keyword options the trainer will pass on every call.

    Raises:
        UnknownNameError: ``estimator`` is a name that is not registered.
        TypeError: ``options`` is not a dict with string keys, or the estimator cannot take the
            common inputs.
        ValueError: an option the estimator does not accept (the message names the option, the
            estimator and the options it accepts), or an option that shadows a data input.
    """
    function = ADVANTAGE_ESTIMATORS.resolve(estimator)
    label = estimator if isinstance(estimator, str) else getattr(function, "__qualname__", repr(function))
    if not isinstance(options, dict) or not all(isinstance(key, str) for key in options):
        raise TypeError(f"Options of advantage estimator {label!r} must be a dict with str keys, got {options!r}.")
    shadowed = sorted(set(options) & set(TRAINER_INPUTS))
    if shadowed:
        raise ValueError(
            f"Option(s) {shadowed} of advantage estimator {label!r} are inputs the trainer supplies, not options."
        )
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as error:
        raise TypeError(f"Cannot read the signature of advantage estimator {label!r}: {error}") from None

    parameters = signature.parameters
    takes_any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    keyword_kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    reserved = set(TRAINER_INPUTS) | set(COMMON_KEYWORDS)
    accepted = [name for name, p in parameters.items() if p.kind in keyword_kinds and name not in reserved]
    if not takes_any_keyword:
        for option in options:
            if option != "epsilon" and option not in accepted:
                raise ValueError(
                    f"Unknown option {option!r} for advantage estimator {label!r}. "
                    f"Accepted options: {', '.join(accepted) if accepted else '(none)'}."
                )
    placeholder_keywords = {**dict.fromkeys(TRAINER_INPUTS[2:]), "epsilon": 1e-4, **options}
    try:
        signature.bind(torch.zeros(2), 2, **placeholder_keywords)
    except TypeError as error:
        raise TypeError(
            f"Advantage estimator {label!r} does not follow the contract "
            f"estimator(rewards, num_generations, *, {', '.join(COMMON_KEYWORDS)}, <options>): {error}"
        ) from None

