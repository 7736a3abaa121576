"""Regularizers: named penalty terms added to the GRPO objective, and their validated configs.

A regularizer is a pure function ``fn(inputs: RegularizerInputs, **options) -> (term, metrics)``
registered with :func:`register_regularizer`. The term is a **penalty**: the trainer adds
``coef * term`` to the loss, or subtracts ``coef * term`` from the reward. Where it goes is the
regularizer's placement:

* ``"loss"``: ``term`` is per token [B, T], added to the per-token policy loss before the loss
  type aggregates it (so it is masked and normalised like the policy loss);
* ``"reward"``: ``term`` is per sequence [B], subtracted from each completion's reward before the
  advantage estimator (computed at generation time, without gradient);
* ``"parameters"``: ``term`` is a scalar added to the aggregated loss.

Regularizers see per-token tensors only (never logits): Unsloth's fused loss computes log-probs
chunk by chunk and never holds a [B, T, V] tensor. ``metrics`` always holds ``"value"``, the
masked mean of the regularized quantity (mean KL per token, mean entropy, mean penalty, ‖W‖²).

A config entry such as ``{"name": "kl", "kind": "k1", "placement": "reward", "coef": 0.02}``
becomes a :class:`RegularizerSpec` (every key other than ``name`` and ``coef`` is an option),
validated against the function's keyword-only options when it is built.

Modules: :mod:`.inputs` (what a regularizer reads), :mod:`.registry` (registration),
:mod:`.spec` (validated configs), :mod:`.builtin` (``kl``, ``entropy``, ``length``, ``lora_l2``).
Importing this package registers the built-ins.
"""
from . import builtin  # noqa: F401  (registers the built-in regularizers)
from .inputs import RegularizerInputs, RegularizerOutput, masked_mean
from .registry import PLACEMENTS, REGULARIZERS, get_regularizer, list_regularizers, register_regularizer
from .spec import RegularizerSpec, parse_regularizers

__all__ = [
    "PLACEMENTS",
    "REGULARIZERS",
    "RegularizerInputs",
    "RegularizerOutput",
    "RegularizerSpec",
    "get_regularizer",
    "list_regularizers",
    "masked_mean",
    "parse_regularizers",
    "register_regularizer",
]
