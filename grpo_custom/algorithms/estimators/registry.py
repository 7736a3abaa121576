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

An estimator may instead follow the inputs contract, ``estimator(inputs, *, <own options>)`` with
its first parameter named ``inputs``: it reads an :class:`~.inputs.AdvantageInputs` (the data above plus
per-token rewards and values) and declares only its options. :func:`register_advantage_estimator`
gives such a function the keyword contract too (``f(rewards, num_generations, completion_mask=...)``
still works), and :func:`call_estimator` calls an estimator of either contract. An estimator that
reads ``inputs.token_rewards`` sets ``uses_token_rewards = True`` on the function; any other
estimator given token-level rewards raises an error naming the reward functions that returned them.

The built-in estimators are in :mod:`grpo_custom.algorithms.estimators.builtin`.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

from grpo_custom.algorithms.estimators.inputs import INPUTS_ONLY_DATA, KEYWORD_DATA, AdvantageInputs
from grpo_custom.algorithms.registry import Registry

ADVANTAGE_ESTIMATORS = Registry("advantage estimator")

# Data the trainer passes to every estimator (rewards and num_generations positionally, the rest
# by keyword); options may not use these names. ``epsilon`` is a common keyword an option may set.
TRAINER_INPUTS = (
    "rewards", "num_generations", "completion_lengths", "completion_mask", "rewards_per_func", "reward_weights"
)
COMMON_KEYWORDS = TRAINER_INPUTS[2:] + ("epsilon",)


def register_advantage_estimator(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering an advantage estimator under ``name`` (duplicates are rejected).

    A keyword-contract function is registered (and returned) as it is; an inputs-contract function
    is registered and returned wrapped by :func:`with_keyword_contract`, callable both ways.
    """
    register = ADVANTAGE_ESTIMATORS.register(name)

    def decorator(function: Callable) -> Callable:
        return register(with_keyword_contract(function) if takes_inputs(function) else function)

    return decorator


def takes_inputs(function: Callable) -> bool:
    """Whether ``function`` follows the inputs contract (its first parameter is named ``inputs``)."""
    if getattr(function, "inputs_function", None) is not None:
        return True
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    return bool(parameters) and parameters[0].name == "inputs"


def with_keyword_contract(function: Callable) -> Callable:
    """Wrap an inputs-contract estimator so it is also callable with the keyword contract.

    The wrapper takes ``(inputs, **options)`` or ``(rewards, num_generations, *, completion_lengths=None,
    completion_mask=None, rewards_per_func=None, reward_weights=None, epsilon=..., **options)``; its
    signature is the latter, so :func:`validate_estimator_options` and ``inspect`` see the options. A
    function without an ``epsilon`` option ignores the common ``epsilon``. The original is
    ``wrapper.inputs_function``.
    """
    if getattr(function, "inputs_function", None) is not None:
        return function
    parameters = list(inspect.signature(function).parameters.values())[1:]
    for parameter in parameters:
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            raise TypeError(f"Advantage estimator {function.__qualname__!r}: after `inputs` only keyword options "
                            f"are allowed, got {parameter}.")
    names = {parameter.name for parameter in parameters}
    clash = sorted(names & (set(TRAINER_INPUTS) | set(INPUTS_ONLY_DATA)))
    if clash:
        raise TypeError(f"Advantage estimator {function.__qualname__!r}: options {clash} are inputs, read them "
                        f"from `inputs` instead.")
    has_epsilon = "epsilon" in names
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    keyword = inspect.Parameter.KEYWORD_ONLY
    legacy = [inspect.Parameter("rewards", positional), inspect.Parameter("num_generations", positional)]
    legacy += [inspect.Parameter(name, keyword, default=None) for name in KEYWORD_DATA]
    if not has_epsilon:
        legacy.append(inspect.Parameter("epsilon", keyword, default=None))
    legacy += [p if p.kind is inspect.Parameter.VAR_KEYWORD else p.replace(kind=keyword) for p in parameters]
    signature = inspect.Signature(legacy)

    def options_for(options: dict) -> dict:
        return {key: value for key, value in options.items() if has_epsilon or key != "epsilon"}

    @functools.wraps(function)
    def estimator(*args, **kwargs):
        if args and isinstance(args[0], AdvantageInputs):
            if len(args) > 1:
                raise TypeError(f"{function.__qualname__}(inputs, **options) takes no other positional argument.")
            return function(args[0], **options_for(kwargs))
        arguments = signature.bind(*args, **kwargs).arguments
        inputs = AdvantageInputs(rewards=arguments.pop("rewards"), num_generations=arguments.pop("num_generations"),
                                 **{name: arguments.pop(name, None) for name in KEYWORD_DATA})
        extra = {}
        for parameter in parameters:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                extra = arguments.pop(parameter.name, {})
        return function(inputs, **options_for({**arguments, **extra}))

    estimator.__signature__ = signature
    estimator.inputs_function = function
    return estimator


def call_estimator(estimator: Callable, inputs: AdvantageInputs, options: dict | None = None) -> torch.Tensor:
    """``estimator``'s advantages for ``inputs``, whichever contract it follows.

    Args:
        estimator: a registered estimator, a mix, or a callable of either contract.
        inputs: the batch.
        options: the estimator's keyword options (``epsilon`` included).

    Returns:
        [N] or [N, T] advantages.

    Raises:
        ValueError: ``inputs.token_rewards`` is set and the estimator does not use token-level rewards
            (the message names the reward functions that returned them).
    """
    options = dict(options or {})
    if inputs.token_rewards is not None and not getattr(estimator, "uses_token_rewards", False):
        label = next((name for name in ADVANTAGE_ESTIMATORS.names() if ADVANTAGE_ESTIMATORS.get(name) is estimator),
                     getattr(estimator, "__name__", repr(estimator)))
        sources = ", ".join(repr(name) for name in inputs.token_reward_functions) or "a reward function"
        raise ValueError(
            f"Reward function {sources} returned token-level rewards (a list per completion), but advantage "
            f"estimator {label!r} takes one reward per completion. Use advantage_estimator='gae' (or "
            f"'reinforce_pp' with gamma < 1), or return one float per completion."
        )
    if takes_inputs(estimator) or hasattr(estimator, "components_at"):
        return estimator(inputs, **options)
    return estimator(inputs.rewards, inputs.num_generations, **inputs.keyword_data(), **options)


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
    shadowed = sorted(set(options) & (set(TRAINER_INPUTS) | set(INPUTS_ONLY_DATA)))
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
    raw_inputs_style = takes_inputs(function) and getattr(function, "inputs_function", None) is None
    reserved = set(TRAINER_INPUTS) | set(COMMON_KEYWORDS) | {"inputs"}
    if raw_inputs_style:  # epsilon is an ordinary option of an inputs-contract estimator
        reserved.discard("epsilon")
    accepted = [name for name, p in parameters.items() if p.kind in keyword_kinds and name not in reserved]
    if not takes_any_keyword:
        for option in options:
            if (option != "epsilon" or raw_inputs_style) and option not in accepted:
                raise ValueError(
                    f"Unknown option {option!r} for advantage estimator {label!r}. "
                    f"Accepted options: {', '.join(accepted) if accepted else '(none)'}."
                )
    if raw_inputs_style:
        try:
            signature.bind(AdvantageInputs(rewards=torch.zeros(2), num_generations=2), **options)
        except TypeError as error:
            raise TypeError(f"Advantage estimator {label!r} does not follow the contract "
                            f"estimator(inputs, *, <options>): {error}") from None
        return
    placeholder_keywords = {**dict.fromkeys(TRAINER_INPUTS[2:]), "epsilon": 1e-4, **options}
    try:
        signature.bind(torch.zeros(2), 2, **placeholder_keywords)
    except TypeError as error:
        raise TypeError(
            f"Advantage estimator {label!r} does not follow the contract "
            f"estimator(rewards, num_generations, *, {', '.join(COMMON_KEYWORDS)}, <options>): {error}"
        ) from None

