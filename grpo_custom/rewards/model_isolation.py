"""Keep a transformers model's forwards transformers' own, whatever Unsloth patched or patches later.

Isolation from Unsloth (unsloth 2026.10.7, transformers 5.17; unsloth issue 1713). What was verified:

- ``import unsloth`` patches shared transformers code (``masking_utils.create_causal_mask`` and its
  siblings, ``GradientCheckpointingLayer.__call__``, ``PreTrainedModel.from_pretrained``/``post_init``,
  the tokenizer's ``apply_chat_template``, ...) and rebinds ``create_causal_mask`` in modeling modules
  imported after it. A sequence classifier still scores bitwise-identically after the import alone.
- ``FastLanguageModel.from_pretrained`` runs ``Fast<Arch>Model.pre_patch()`` (e.g.
  ``unsloth/models/llama.py``, ``FastLlamaModel.pre_patch``), which rebinds, class-wide in the
  architecture's modeling module, ``<Arch>Attention.forward``, ``<Arch>DecoderLayer.forward``,
  ``<Arch>Model.forward``, ``<Arch>ForCausalLM.forward`` and the module-level ``<Arch>RotaryEmbedding``
  class. ``<Arch>ForSequenceClassification`` keeps its own forward but runs the patched ``<Arch>Model``
  inside it, and building one afterwards instantiates Unsloth's rotary embedding (on a CPU it fails
  asking for CUDA). So capturing the classifier's own ``forward`` protects nothing.

What this module does instead: every submodule of the reward model whose class is defined in a
``transformers.models.*.modeling_*`` module is re-classed (``module.__class__ = ...``) onto a private,
freshly executed copy of that modeling file (``transformers.models.<arch>._grpo_custom_pristine_<leaf>``),
so its forwards are transformers' own and stay so whatever is patched later (bitwise-identical outputs
checked on 17 architectures: llama, qwen2/3, qwen3_moe, mistral, mixtral, gemma 1-3, phi3, olmo2,
starcoder2, gpt_neox, gpt2, bert, roberta, distilbert). While loading
from a path, module-level names of the architecture's modeling module that Unsloth replaced (the rotary
embedding class) are swapped for the pristine ones and restored afterwards. A model already built with
Unsloth classes inside, or an Unsloth-replaced ``__init__`` in the modeling module, is an error. The
shared-module patches of ``import unsloth`` are left in place (verified harmless above). The tests run
this in a subprocess under Unsloth's CPU spoof and compare scores bitwise with a clean process.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from torch import nn

from grpo_custom.utils.module_loading import exec_module_from_file

_PRISTINE_PREFIX = "_grpo_custom_pristine_"
_pristine_modules: dict[str, ModuleType] = {}


def _is_unsloth_object(obj: Any) -> bool:
    """Whether ``obj`` (function, class, method) was defined by Unsloth (unsloth, unsloth_zoo, compiled cache)."""
    return str(getattr(obj, "__module__", None) or "").startswith("unsloth")


def _is_modeling_module(module_name: str) -> bool:
    """``transformers.models.<arch>.modeling_*`` (the private pristine copies' leaves do not match)."""
    leaf = module_name.rsplit(".", 1)[-1]
    return module_name.startswith("transformers.models.") and leaf.startswith("modeling_")


def pristine_modeling_module(module_name: str) -> ModuleType:
    """A private copy of a transformers modeling module, executed afresh from its source file (cached).

    Its classes and functions are transformers' own even after Unsloth rebinds names in the original
    module. Named ``<package>._grpo_custom_pristine_<leaf>`` so its relative imports resolve inside
    transformers; registered in ``sys.modules`` so its classes pickle.

    Args:
        module_name: e.g. ``"transformers.models.llama.modeling_llama"``.
    """
    if module_name in _pristine_modules:
        return _pristine_modules[module_name]
    if not _is_modeling_module(module_name):
        raise ValueError(f"pristine_modeling_module: {module_name!r} is not a transformers.models.*.modeling_* module.")
    original = importlib.import_module(module_name)
    package, leaf = module_name.rsplit(".", 1)
    private_name = f"{package}.{_PRISTINE_PREFIX}{leaf}"
    source_file = getattr(original, "__file__", None)
    if not source_file:
        raise ValueError(f"pristine_modeling_module: cannot re-execute {module_name!r} (no source file found).")
    module = exec_module_from_file(private_name, source_file)
    _pristine_modules[module_name] = module
    return module


@contextmanager
def _unpatched_construction(module_name: str) -> Iterator[None]:
    """While active, the modeling module's Unsloth-replaced module-level names are transformers' own."""
    module = importlib.import_module(module_name)
    for class_name, cls in vars(module).items():
        if isinstance(cls, type) and cls.__module__ == module_name and _is_unsloth_object(cls.__dict__.get("__init__")):
            raise ValueError(
                f"RewardModelReward: Unsloth replaced {class_name}.__init__ in {module_name}; load the reward "
                "model before FastLanguageModel.from_pretrained, or from a checkpoint of another architecture."
            )
    replaced = {
        name: value for name, value in vars(module).items() if not name.startswith("__") and _is_unsloth_object(value)
    }
    pristine = pristine_modeling_module(module_name) if replaced else None
    swapped = {name: value for name, value in replaced.items() if hasattr(pristine, name)}
    for name in swapped:
        setattr(module, name, getattr(pristine, name))
    try:
        yield
    finally:
        for name, value in swapped.items():
            setattr(module, name, value)


def isolate_from_unsloth(model: nn.Module) -> nn.Module:
    """Re-class every transformers-modeling submodule of ``model`` onto :func:`pristine_modeling_module` copies.

    After this, ``model``'s forwards are transformers' own whatever Unsloth patches (before or after).
    In place; returns ``model``. Raises ``ValueError`` when a submodule was built from an Unsloth class
    or carries an Unsloth forward on the instance (the state such code built cannot be trusted).

    Args:
        model: the reward model.
    """
    for name, submodule in model.named_modules():
        where = name or "<root>"
        cls = type(submodule)
        if _is_unsloth_object(cls) or _is_unsloth_object(submodule.__dict__.get("forward")):
            raise ValueError(
                f"RewardModelReward: submodule {where} ({cls.__qualname__}) was built or patched by Unsloth "
                f"({cls.__module__}); pass the reward model as a path, or build it before "
                "FastLanguageModel.from_pretrained."
            )
        if not _is_modeling_module(cls.__module__):
            continue
        pristine_cls = getattr(pristine_modeling_module(cls.__module__), cls.__name__, None)
        if not isinstance(pristine_cls, type) or pristine_cls.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"RewardModelReward: cannot isolate submodule {where}: {cls.__qualname__} is not a top-level "
                f"class of {cls.__module__}."
            )
        submodule.__class__ = pristine_cls
    return model

