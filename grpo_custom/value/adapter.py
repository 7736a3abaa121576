"""The critic's own LoRA adapter (``value_function={"kind": "adapter"}``) on the policy's base model.

PEFT holds several adapters on one base model and runs the active one. The critic adds one more adapter, named
:data:`CRITIC_ADAPTER`, with the policy adapter's LoRA settings (rank, α, target modules) and its own weights:
the value model is then base + critic LoRA + head, a separate critic at LoRA cost (old TRL's PPO and verl load a
second full model for it). Its forwards run with the critic adapter active and the policy's off
(:func:`critic_adapter_active`); PEFT's ``set_adapter`` (and Unsloth's fast LoRA kernels, which read the active
adapter) then compute base + critic LoRA. Everything else in the trainer sees the policy's adapter only: the
critic's parameters never require a gradient outside that context, so neither the policy's optimizer nor DDP's
reducer holds them.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

CRITIC_ADAPTER = "grpo_custom_critic"


def peft_model_of(model: nn.Module):
    """The PEFT model under a DDP wrapper, or None when ``model`` is not a PEFT model."""
    inner = getattr(model, "module", model)
    return inner if hasattr(inner, "peft_config") and hasattr(inner, "add_adapter") else None


def add_critic_adapter(model: nn.Module, seed: int) -> dict[str, nn.Parameter]:
    """Add the critic adapter (zero LoRA B: the critic starts from the base model); returns its parameters by
    name (:func:`critic_named_parameters`).

    Its LoRA A is drawn from ``seed`` in a forked RNG, so every process builds the same adapter and the trainer's
    random streams are not consumed. Every parameter keeps its ``requires_grad`` (the new ones: False).

    Raises:
        ValueError: as :func:`check_lora_policy`.
    """
    peft_model = check_lora_policy(model)
    if CRITIC_ADAPTER in peft_model.peft_config:
        return critic_named_parameters(peft_model)
    active = peft_model.active_adapter
    config = copy.deepcopy(peft_model.peft_config[active])
    config.inference_mode = False
    flags = {name: p.requires_grad for name, p in peft_model.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model.add_adapter(CRITIC_ADAPTER, config)
    peft_model.set_adapter(active)
    for name, param in peft_model.named_parameters():
        param.requires_grad_(flags.get(name, False))
    _save_without_critic(peft_model)
    return critic_named_parameters(peft_model)  # PEFT puts them on their base layer's device, in the adapters' dtype


def check_lora_policy(model: nn.Module):
    """The PEFT model the critic adapter goes into (``model``, or under its DDP wrapper).

    Raises:
        ValueError: ``model`` is not a PEFT model (naming its type and the ways to make it one), or its active
            adapter is not LoRA (naming it and its type).
    """
    peft_model = peft_model_of(model)
    if peft_model is None:
        raise ValueError(f"value_function['kind']='adapter' adds a critic LoRA adapter beside the policy's, but the "
                         f"policy is a {type(getattr(model, 'module', model)).__name__}, not a PEFT model: pass "
                         "peft_config=LoraConfig(...) to the trainer, wrap the model with peft.get_peft_model (or "
                         "Unsloth's FastLanguageModel.get_peft_model), or choose kind 'head' / 'shared_head'.")
    active = peft_model.active_adapter
    policy_config = peft_model.peft_config[active]
    if getattr(policy_config, "peft_type", None) is None or str(policy_config.peft_type.value) != "LORA":
        raise ValueError(f"value_function['kind']='adapter' copies the policy's LoRA settings, but its adapter "
                         f"{active!r} is {getattr(policy_config, 'peft_type', None)}, not LoRA.")
    return peft_model


def _save_without_critic(peft_model) -> None:
    """``save_pretrained`` of this model leaves the critic adapter out unless asked for by name.

    The critic's weights travel in ``value_head.pt`` (:mod:`grpo_custom.value.state`). A folder holding the
    policy's adapter alone loads as before (``PeftModel.from_pretrained``), and Transformers' resume, which loads
    only the sub-folder adapters when a checkpoint has any, restores the policy's adapter from the folder's root.
    """
    original = peft_model.save_pretrained

    def save_pretrained(save_directory, *args, selected_adapters=None, **kwargs):
        if selected_adapters is None:
            selected_adapters = [name for name in peft_model.peft_config if name != CRITIC_ADAPTER]
        return original(save_directory, *args, selected_adapters=selected_adapters, **kwargs)

    save_pretrained.grpo_custom_original = original
    peft_model.save_pretrained = save_pretrained


def critic_named_parameters(peft_model) -> dict[str, nn.Parameter]:
    """The critic adapter's parameters by name (as the PEFT model's ``named_parameters``), in that order."""
    marker = f".{CRITIC_ADAPTER}."
    return {name: p for name, p in peft_model.named_parameters() if marker in name}


@contextmanager
def critic_adapter_active(model: nn.Module):
    """Inside: the critic adapter is the active one and its parameters require a gradient; the policy adapter is
    off. On exit: the policy's adapter is active again and every parameter's ``requires_grad`` is as before."""
    peft_model = peft_model_of(model)
    active = peft_model.active_adapter
    flags = [(p, p.requires_grad) for p in peft_model.parameters()]
    peft_model.set_adapter(CRITIC_ADAPTER)
    try:
        yield
    finally:
        peft_model.set_adapter(active)
        for param, flag in flags:
            param.requires_grad_(flag)
