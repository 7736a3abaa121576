"""Registering a regularizer function: its placement(s), needs and option checks, and looking it up by name."""
from __future__ import annotations

import inspect
from typing import Callable

from grpo_custom.algorithms.registry import Registry
from grpo_custom.algorithms.regularizers.inputs import RegularizerOutput

PLACEMENTS = ("loss", "reward", "parameters")

REGULARIZERS = Registry("regularizer")


def register_regularizer(
    name: str,
    *,
    placement: str | tuple[str, ...] = "loss",
    needs_entropy: bool = False,
    needs_reference: bool = False,
    check_options: Callable[..., None] | None = None,
) -> Callable[[Callable[..., RegularizerOutput]], Callable[..., RegularizerOutput]]:
    """Decorator registering a regularizer under ``name`` in :data:`REGULARIZERS`.

    The function must take the inputs as its one positional parameter and every option as a
    keyword-only parameter (no ``**kwargs``), so a misspelled option in a config is an error.
    Attributes stored on it: ``placement`` (default placement), ``placements`` (allowed ones),
    ``needs_entropy``, ``needs_reference``, ``check_options``.

    Args:
        name: registry name, used in configs.
        placement: one of :data:`PLACEMENTS`, or a tuple of them when the placement is chosen per
            config through a keyword-only ``placement`` option (its default must be the first).
        needs_entropy: the term reads ``inputs.entropies`` (the trainer must compute them).
        needs_reference: the term reads ``inputs.ref_logps`` (the trainer needs a reference model).
        check_options: called with every option (defaults filled in) when a config is built;
            raises ValueError on a bad value, so a config fails before training starts.
    """
    placements = (placement,) if isinstance(placement, str) else tuple(placement)
    bad = [p for p in placements if p not in PLACEMENTS]
    if not placements or bad:
        raise ValueError(
            f"Regularizer {name!r}: placement must be one of {', '.join(PLACEMENTS)} (or a tuple of them), "
            f"got {placement!r}."
        )

    def decorator(function: Callable[..., RegularizerOutput]) -> Callable[..., RegularizerOutput]:
        _check_signature(name, function, placements)
        REGULARIZERS.register(name)(function)
        function.placement = placements[0]
        function.placements = placements
        function.needs_entropy = bool(needs_entropy)
        function.needs_reference = bool(needs_reference)
        function.check_options = check_options
        return function

    return decorator


def _check_signature(name: str, function: Callable, placements: tuple[str, ...]) -> None:
    """Enforce ``fn(inputs, *, option=default, ...)``; a multi-placement one needs a ``placement`` option."""
    parameters = list(inspect.signature(function).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not parameters or parameters[0].kind not in positional:
        raise TypeError(f"Regularizer {name!r} must take the RegularizerInputs as its first positional parameter.")
    for parameter in parameters[1:]:
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(
                f"Regularizer {name!r}: parameter {parameter.name!r} must be keyword-only (declare options after "
                "`*`; **kwargs is not allowed, so that misspelled options are caught)."
            )
    options = {parameter.name: parameter for parameter in parameters[1:]}
    if len(placements) > 1:
        if "placement" not in options or options["placement"].default != placements[0]:
            raise TypeError(
                f"Regularizer {name!r} is registered with placements {placements}: it must take a keyword-only "
                f"option `placement={placements[0]!r}` (the default is the first placement)."
            )
    elif "placement" in options:
        raise TypeError(
            f"Regularizer {name!r} has a 'placement' option but is registered with the single placement "
            f"{placements[0]!r}; register it with a tuple of placements."
        )


def get_regularizer(name: str) -> Callable[..., RegularizerOutput]:
    """The regularizer registered as ``name``; an unknown name raises an error listing the valid ones."""
    return REGULARIZERS.get(name)


def list_regularizers() -> list[str]:
    """Names of the registered regularizers, in registration order."""
    return REGULARIZERS.names()

