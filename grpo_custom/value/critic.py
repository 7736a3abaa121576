"""The critic of one trainer: its head, the capture of the policy's hidden states, its optimizer, its batch.

Built lazily from ``trainer.args.value_function_config`` the first time a hook needs it (the policy model is
final by then: PEFT applied, Unsloth patched) and kept at ``trainer.grpo_custom.critic``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from grpo_custom.value.capture import HiddenStateCapture, completion_features, decoder_of, resolve_layers
from grpo_custom.value.config import ValueFunctionConfig
from grpo_custom.value.head import ValueHead
from grpo_custom.value.optimizer import CriticOptimizer

OLD_VALUES_KEY = "grpo_custom_old_values"  # [B, T] keys the critic adds to TRL's generation batch
RETURNS_KEY = "grpo_custom_returns"


@dataclass
class Critic:
    """``config``, the ``head`` (float32, on the policy's device), the ``capture`` hooks, the critic's own
    ``optimizer`` and, for the ``adapter`` kind, the critic adapter's parameters by name (``adapter_params``);
    ``batch`` holds the
    current generation batch's local old values / returns ([B, T])."""

    config: ValueFunctionConfig
    head: ValueHead
    capture: HiddenStateCapture
    optimizer: CriticOptimizer
    adapter_params: dict = field(default_factory=dict)
    batch: dict = field(default_factory=dict)
    optimizer_hooks: tuple = ()  # (the policy's torch optimizer, its hook handles) once installed
    pending_returns: tuple | None = None  # (returns [N, T], mask [N, T]) of the last batch, for μ_R, σ_R

    @classmethod
    def build(cls, config: ValueFunctionConfig, model, seed: int = 0) -> "Critic":
        """A zero-initialised head (identical on every process) on ``model``'s hidden states; for the ``adapter``
        kind also the critic adapter (:func:`grpo_custom.value.adapter.add_critic_adapter`, LoRA A drawn from
        ``seed``).

        Raises:
            ValueError: the ``adapter`` kind on a model that is not a PEFT LoRA model, or whose parameters a
                sharded engine (FSDP2 / ZeRO-3) holds (the adapter would be added after sharding).
        """
        decoder = decoder_of(model)
        layers = resolve_layers(config.layers, len(decoder.layers))
        hidden_size = decoder.embed_tokens.embedding_dim
        device = next(model.parameters()).device
        head = ValueHead(hidden_size, len(layers), time_feature=config.time_feature).to(device)
        adapter_params = {}
        if config.kind == "adapter":
            from grpo_custom.algorithms.sharding import has_sharded_parameters
            from grpo_custom.value.adapter import add_critic_adapter

            if has_sharded_parameters(model):
                raise ValueError("value_function['kind']='adapter' adds a LoRA adapter after the engine sharded the "
                                 "model (FSDP2 / ZeRO-3), which it cannot hold; use kind 'head' or 'shared_head'.")
            adapter_params = add_critic_adapter(model, seed)
        capture = HiddenStateCapture(model, layers, detach=config.kind == "head")
        optimizer = CriticOptimizer(head, config.lr, config.max_grad_norm, adapter_params.values(), config.adapter_lr)
        return cls(config=config, head=head, capture=capture, optimizer=optimizer, adapter_params=adapter_params)

    @property
    def layers(self) -> tuple:
        return self.capture.layers

    def values(self, calls: list[dict], row_lengths: torch.Tensor, prompt_lengths: torch.Tensor,
               completion_width: int, max_length: int, feature_grad_scale: float = 1.0) -> torch.Tensor:
        """V of the state before each completion token, [B, T] float32 (0 where no such state); ``max_length``:
        the completion length limit (the time feature is t / max_length). ``feature_grad_scale``: the gradient
        that reaches the hidden states is multiplied by it (their values are unchanged; the head's own gradient
        is not): ``shared_head``'s coef."""
        features, valid = completion_features(calls, self.layers, row_lengths, prompt_lengths, completion_width)
        if feature_grad_scale != 1.0:
            features = [f.detach() + feature_grad_scale * (f - f.detach()) for f in features]
        time = None
        if self.config.time_feature:
            time = torch.arange(completion_width, device=valid.device, dtype=torch.float32) / max(max_length, 1)
        return self.head(features, time) * valid.to(torch.float32)  # [B, T]

    def remove(self) -> None:
        """Take the hooks off the policy and its optimizer."""
        self.capture.remove()
        for handle in self.optimizer_hooks[1:]:
            handle.remove()
        self.optimizer_hooks = ()


def critic_of(trainer) -> Critic | None:
    """The trainer's critic (built on first use), or None without ``value_function``."""
    config = getattr(trainer.args, "value_function_config", None)
    extras = getattr(trainer, "grpo_custom", None)
    if config is None or extras is None:
        return None
    critic = getattr(extras, "critic", None)
    if critic is None:
        critic = Critic.build(config, trainer.model, seed=int(trainer.args.seed))
        extras.critic = critic
        _save_head_with_model(trainer, critic)
    return critic


def on_fast_path(trainer) -> bool:
    """Whether ``trainer`` is Unsloth's compiled trainer (the patch installs this marker on its class)."""
    return getattr(type(trainer), "grpo_custom_fast_path_check", None) is not None


def _save_head_with_model(trainer, critic: Critic) -> None:
    """``trainer.save_model(dir)`` also writes the head beside the adapter (:data:`state.HEAD_FILE`)."""
    from grpo_custom.value.state import save_head

    original = trainer.save_model

    def save_model(output_dir=None, _internal_call=False):
        result = original(output_dir, _internal_call=_internal_call)
        if trainer.args.should_save:
            save_head(critic, output_dir if output_dir is not None else trainer.args.output_dir)
        return result

    save_model.grpo_custom_original = original
    trainer.save_model = save_model
