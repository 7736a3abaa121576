"""Reading parameters that a distributed engine shards: DeepSpeed ZeRO-3 and PyTorch FSDP2.

Under ZeRO-3 a parameter outside its module's forward holds an empty partition (shape ``(0,)``; the real
size is in ``ds_numel`` / ``ds_shape``), so a sum over ``model.parameters()`` is 0.0. Under FSDP2
(``fully_shard``) a parameter is a ``DTensor`` whose local part is this rank's rows; ``.full_tensor()``
all-gathers it. Code that reads weights outside the model's forward (parameter-space regularizers, an
output head's weight) must go through these helpers. Nothing here imports DeepSpeed unless a ZeRO-3
parameter is present, nor initializes a process group.

Helpers:

* :func:`is_dtensor`, :func:`is_zero3_parameter`, :func:`is_sharded`: what a tensor is;
* :func:`full_tensor`: the whole value of one tensor (all-gathers a DTensor, differentiably);
* :func:`gathered_parameters`: context in which ZeRO-3 parameters hold their full data (reads only);
* :func:`full_parameters`: context in which a model's trainable parameters are replaced by full,
  differentiable copies: a term computed inside it has the single-process value on every rank, and its
  gradient reaches the real (sharded) parameters, where the engine reduces it like any other gradient;
* :func:`replicated_loading`: ``from_pretrained`` of a whole model on each rank under a ZeRO-3 config;
* :func:`launch_engine`: the engine and world size the launch environment selects.

Collectives: ZeRO-3 gathers and ``full_tensor`` are collectives, so every rank must make the same calls in
the same order (the trainer calls the regularizers on every rank at every step).
"""
from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn


def is_dtensor(tensor: object) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (an FSDP2 / tensor-parallel parameter)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def is_zero3_parameter(tensor: object) -> bool:
    """True for a parameter partitioned by DeepSpeed ZeRO-3 (it carries ``ds_id`` and ``ds_numel``)."""
    return isinstance(tensor, torch.Tensor) and hasattr(tensor, "ds_id") and hasattr(tensor, "ds_numel")


def is_sharded(tensor: object) -> bool:
    """True for a tensor that an engine shards across ranks (a DTensor or a ZeRO-3 parameter)."""
    return is_dtensor(tensor) or is_zero3_parameter(tensor)


def _zero3_released(tensor: torch.Tensor) -> bool:
    """A ZeRO-3 parameter whose full data is not present on this rank right now."""
    return is_zero3_parameter(tensor) and tensor.numel() != int(tensor.ds_numel)


def full_tensor(tensor: torch.Tensor, *, name: str = "tensor") -> torch.Tensor:
    """The whole value of ``tensor``, whatever engine shards it.

    A DTensor is all-gathered with ``.full_tensor()`` (differentiable: the gradient of the result reaches
    this rank's shard); a plain tensor, or a ZeRO-3 parameter whose data is gathered (inside its module's
    forward or :func:`gathered_parameters`), is returned as it is.

    Args:
        tensor: any tensor, e.g. an output head's weight [V, H].
        name: what the tensor is, for the error message.

    Raises:
        ValueError: ``tensor`` is a ZeRO-3 parameter whose data is released (shape ``(0,)``): gather it
            first with :func:`gathered_parameters`.
    """
    if is_dtensor(tensor):
        return tensor.full_tensor()
    if _zero3_released(tensor):
        raise ValueError(
            f"{name} is a DeepSpeed ZeRO-3 parameter whose data is partitioned away (local shape "
            f"{tuple(tensor.shape)}, full shape {tuple(tensor.ds_shape)}): read it inside "
            "grpo_custom.algorithms.sharding.gathered_parameters([...]) or inside the model's forward."
        )
    return tensor


@contextlib.contextmanager
def gathered_parameters(parameters: Iterable[torch.Tensor]) -> Iterator[None]:
    """Context in which every ZeRO-3 parameter of ``parameters`` holds its full data on every rank.

    Wraps ``deepspeed.zero.GatheredParameters(..., modifier_rank=None)``: values read inside are the
    full ones, changes are discarded, and the data is released again on exit, so a tensor that autograd
    saved from a parameter inside the context is empty afterwards (use :func:`full_parameters` for terms
    with gradients). Other parameters (plain, DTensor) are left alone; without ZeRO-3 parameters this is
    a no-op and DeepSpeed is not imported. A collective: every rank must enter it with the same list.
    """
    zero3 = [parameter for parameter in parameters if is_zero3_parameter(parameter)]
    if not zero3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(zero3, modifier_rank=None):
        yield


class _FullCopy(torch.autograd.Function):
    """A full copy of a gathered ZeRO-3 parameter whose gradient goes back to the parameter.

    Forward: ``parameter.detach().clone()`` (call it while the parameter is gathered, so the copy
    outlives the release). Backward: the incoming gradient, full-shaped, as DeepSpeed expects from its
    parameters' gradient hooks (it then reduce-scatters and averages it like the forward's gradients).
    """

    @staticmethod
    def forward(ctx, parameter: torch.Tensor) -> torch.Tensor:
        return parameter.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def has_sharded_parameters(model: nn.Module) -> bool:
    """True when some trainable parameter of ``model`` is a DTensor or a ZeRO-3 parameter."""
    return any(is_sharded(trained) for _, _, _, trained in _slots(model))


@contextlib.contextmanager
def replicated_loading() -> Iterator[None]:
    """Context in which transformers' ``from_pretrained`` builds a whole model on this rank.

    Once ``TrainingArguments`` carry a DeepSpeed ZeRO-3 config (``accelerate launch`` with a ZeRO-3 config
    file), transformers loads every model under ``deepspeed.zero.Init`` and partitions its weights; a model
    the engine never wraps (a reward model scored by plain forwards on each rank) would then hold empty
    weights. This unsets transformers' DeepSpeed config for the duration and restores it on exit.
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # transformers without its DeepSpeed integration: nothing partitions
        yield
        return
    reference = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    active = reference() if reference is not None else None
    if active is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(active)


def _fsdp2_sharded(model: nn.Module) -> dict[tuple[int, str], tuple[nn.Module, str, torch.Tensor]]:
    """``{(id(module), name): (module, name, sharded DTensor parameter)}`` for every slot FSDP2 manages in ``model``.

    Between a forward and its backward, a block that keeps its parameters gathered (``reshard_after_forward=
    False``, as Unsloth does for the last block) holds unsharded tensors in the module, and under Unsloth's native
    FSDP2 (2026.10.9, CPU) they and their DTensors are flagged ``requires_grad=False`` for part of a step. FSDP2's
    own record (the module state's parameter groups, private API: the only map from a slot to its sharded
    parameter) says what the optimizer steps; a slot missing from ``_parameters`` is handled too.
    """
    if not torch.distributed.is_available():
        return {}
    from torch.distributed.fsdp import FSDPModule

    sharded = {}
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        state = module._get_fsdp_state()
        groups = getattr(state, "_fsdp_param_groups", None)  # torch ≥ 2.10 (several meshes); before: one group
        groups = groups if groups is not None else [getattr(state, "_fsdp_param_group", None)]
        for fsdp_param in [param for group in groups if group is not None for param in group.fsdp_params]:
            info = fsdp_param._module_info
            for owner, name in [(info.module, info.param_name), *zip(info.shared_modules, info.shared_param_names)]:
                sharded[(id(owner), name)] = (owner, name, fsdp_param.sharded_param)
    return sharded


def _slots(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor]]:
    """``(module, name, tensor registered in the slot now or None, the parameter that is trained)`` for every
    trainable slot of ``model``, in the same order on every rank."""
    sharded = _fsdp2_sharded(model)
    # A slot FSDP2 manages stays trainable once seen trainable: Unsloth's native FSDP2 (2026.10.9, CPU) flags the
    # kept-gathered last block's weights requires_grad=False in both forms for part of a step.
    known = _TRAINABLE_FSDP2_SLOTS.setdefault(model, set()) if sharded else set()
    found, seen = [], set()
    for module in model.modules():
        for name, current in module._parameters.items():
            if current is None:
                continue
            key = (id(module), name)
            seen.add(key)
            trained = sharded.get(key, (None, None, current))[2]
            if trained.requires_grad or current.requires_grad or key in known:
                found.append((module, name, current, trained))
    for key, (module, name, trained) in sharded.items():
        if key not in seen and (trained.requires_grad or key in known):  # unsharded outside _parameters now
            found.append((module, name, None, trained))
    known.update((id(module), name) for module, name, _, _ in found if (id(module), name) in sharded)
    return found


_TRAINABLE_FSDP2_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def full_parameters(model: nn.Module | None) -> Iterator[nn.Module | None]:
    """Context in which ``model``'s trainable parameters are full, differentiable tensors.

    Inside it, ``model.named_parameters()`` and attribute reads (``module.weight``) give, for each
    trainable parameter sharded by FSDP2 (DTensor) or ZeRO-3, a plain tensor holding the whole value
    (``requires_grad=True``); a term built from them has the single-process value on every rank and
    backpropagates into the real parameters: FSDP2 shards the gradient to this rank's rows, ZeRO-3 hands
    the full gradient to its reduce-scatter. With every rank adding the same term, the engine's average
    over ranks is the term's own gradient, as on one process. Plain parameters and frozen ones are
    left as they are (frozen ZeRO-3 weights stay partitioned: read them with :func:`gathered_parameters`).
    FSDP2: a block kept gathered between forward and backward contributes its unsharded weights (their gradient
    is reduce-scattered by FSDP2); a weight once seen trainable but flagged frozen right now is counted in the
    value, as a leaf whose gradient nothing uses.
    The parameters are put back on exit, even after an error. Cost: one full copy of the trainable
    parameters for as long as the term's graph lives (small for LoRA adapters).

    Args:
        model: any ``nn.Module`` (a PEFT model, an FSDP2 module, a DeepSpeed engine's ``.module``), or None
            (the context then yields None and does nothing).

    Yields:
        ``model`` itself, its parameters replaced until exit.
    """
    slots = [] if model is None else _slots(model)
    if not any(is_sharded(trained) for _, _, _, trained in slots):
        yield model
        return
    with gathered_parameters([trained for _, _, _, trained in slots]):
        full: dict[int, torch.Tensor] = {}
        for _, _, current, trained in slots:  # same order on every rank: the gathers are collectives
            if id(trained) in full:
                continue
            if current is not None and current is not trained and current.requires_grad \
                    and current.untyped_storage().size() > 0:
                full[id(trained)] = current  # FSDP2 keeps it gathered: whole; its gradient is reduce-scattered
            elif is_dtensor(trained):
                full[id(trained)] = trained.full_tensor()
            elif is_zero3_parameter(trained):
                full[id(trained)] = _FullCopy.apply(trained)
            else:
                full[id(trained)] = trained
            if torch.is_grad_enabled() and not full[id(trained)].requires_grad:  # flagged frozen for now (above):
                full[id(trained)] = full[id(trained)].detach().requires_grad_(True)  # counted, its gradient unused
    try:
        for module, name, _, trained in slots:
            module._parameters[name] = full[id(trained)]
        yield model
    finally:
        for module, name, current, _ in slots:
            if current is None:
                del module._parameters[name]
            else:
                module._parameters[name] = current


def launch_engine(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """``(engine, world size)`` that the launch environment selects, as ``grpo-custom doctor`` reports it.

    Read from the variables the launchers set (``os.environ`` when ``environ`` is None): ``WORLD_SIZE``
    (torchrun, ``accelerate launch``), ``ACCELERATE_USE_DEEPSPEED`` with ``ACCELERATE_DEEPSPEED_ZERO_STAGE``,
    ``ACCELERATE_USE_FSDP`` with ``FSDP_VERSION``, and Unsloth's ``UNSLOTH_FSDP2`` (its native FSDP2 needs a
    world size above 1 and no accelerate FSDP config). Engines: "DeepSpeed ZeRO-<stage>", "FSDP<version>
    (accelerate)", "Unsloth native FSDP2", "DDP", or "single process".
    """
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or "1")
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() in _TRUE:
        return f"DeepSpeed ZeRO-{env.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}", world
    if env.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE:
        return f"FSDP{env.get('FSDP_VERSION', '1')} (accelerate)", world
    if env.get("UNSLOTH_FSDP2", "").strip().lower() in (*_TRUE, "native") and world > 1:
        return "Unsloth native FSDP2", world
    return ("DDP" if world > 1 else "single process"), world


_TRUE = ("1", "true", "yes", "on")
