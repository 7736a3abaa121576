"""Pluggable advantage estimators: the registry and its contract (:mod:`.registry`), the built-ins (:mod:`.builtin`).

Importing this package registers the built-in estimators, then ``gae`` (:mod:`.gae`); the inputs
object of the inputs contract is :class:`.inputs.AdvantageInputs`.
"""
from . import builtin  # noqa: F401  (registers the built-in estimators)
from .gae import _register_gae_estimator, adaptive_lambda, compute_gae
from .inputs import AdvantageInputs
from .registry import (
    ADVANTAGE_ESTIMATORS,
    COMMON_KEYWORDS,
    TRAINER_INPUTS,
    call_estimator,
    get_advantage_estimator,
    list_advantage_estimators,
    register_advantage_estimator,
    validate_estimator_options,
)

_register_gae_estimator()

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdvantageInputs",
    "adaptive_lambda",
    "call_estimator",
    "compute_gae",
    "COMMON_KEYWORDS",
    "TRAINER_INPUTS",
    "get_advantage_estimator",
    "list_advantage_estimators",
    "register_advantage_estimator",
    "validate_estimator_options",
]
