"""Name → function registries (the pattern of verl's ``register_adv_est``).

A :class:`Registry` maps names to pure functions. Registering a name twice is an error, and
looking up an unknown name raises an error that lists every valid name, so a typo in a config
never falls back silently to a default.
"""
from __future__ import annotations

from typing import Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable)


class UnknownNameError(KeyError, ValueError):
    """Raised for a name that is not registered; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry:
    """A named collection of functions of one kind (e.g. ``"advantage estimator"``).

    Args:
        kind: human-readable kind, used in error messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._functions: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering a function under ``name``; rejects duplicates and non-callables."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} name must be a non-empty string, got {name!r}.")

        def decorator(function: F) -> F:
            if not callable(function):
                raise TypeError(f"{self.kind} {name!r} must be callable, got {type(function).__name__}.")
            if name in self._functions:
                raise ValueError(
                    f"A {self.kind} named {name!r} is already registered "
                    f"({self._functions[name].__module__}.{self._functions[name].__qualname__}); "
                    "choose another name."
                )
            self._functions[name] = function
            return function

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests and by users replacing their own registrations)."""
        self.get(name)
        del self._functions[name]

    def get(self, name: str) -> Callable:
        """Return the function registered as ``name``; an unknown name lists the valid ones."""
        try:
            return self._functions[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}. Registered {self.kind}s: {', '.join(self.names())}."
            ) from None

    def resolve(self, name_or_function: str | Callable) -> Callable:
        """A registered name or any callable → the callable."""
        if callable(name_or_function):
            return name_or_function
        return self.get(name_or_function)

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._functions)

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def __iter__(self) -> Iterator[str]:
        return iter(self._functions)
