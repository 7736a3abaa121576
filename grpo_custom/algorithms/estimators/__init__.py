"""Pluggable advantage estimators: the registry and its contract (:mod:`.registry`), the built-ins (:mod:`.builtin`).

Importing this package registers the built-in estimators.
"""
from . import builtin  # noqa: F401  (registers the built-in estimators)
from .registry import (
    ADVANTAGE_ESTIMATORS,
    COMMON_KEYWORDS,
    TRAINER_INPUTS,
    get_advantage_estimator,
    list_advantage_estimators,
    register_advantage_estimator,
    validate_estimator_options,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "COMMON_KEYWORDS",
    "TRAINER_INPUTS",
    "get_advantage_estimator",
    "list_advantage_estimators",
    "register_advantage_estimator",
    "validate_estimator_options",
]
