"""Reading the policy's hidden states from a forward that runs anyway (no second forward of the policy).

Forward hooks on the decoder (its ``embed_tokens``, its decoder layers, the decoder itself) keep the hidden
states of the chosen layers, and a pre-hook keeps which positions were real tokens. Every layout the policy's
forward uses is read the same way: TRL's left-padded rows (its attention mask), Unsloth's left-packed mini-batch
rows (pads moved to the end, mask ``ids != pad``) and Unsloth's sequence packing (one row of real tokens, no
mask): the real tokens of all forwards of one loss call, in order, are the rows' real tokens one after another.
Row r's completion token t is then predicted by the state at real index ``prompt_len_r + t − 1`` of that row,
the state *before* the token (the alignment of verl/OpenRLHF, ``values[:, -L-1:-1]``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder (the module holding ``layers`` and ``embed_tokens``) of a causal LM, PEFT or DDP wrapped.

    Raises:
        ValueError: the model has no such module (the value function needs a decoder-only transformer).
    """
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if decoder is None or not hasattr(decoder, "layers") or not hasattr(decoder, "embed_tokens"):
        raise ValueError(f"value_function: {type(inner).__name__} has no decoder with `layers` and `embed_tokens` "
                         "(get_decoder()); the value head reads a decoder-only transformer's hidden states.")
    return decoder


def resolve_layers(layers: tuple, num_layers: int) -> tuple:
    """Hidden-state indices (0 … num_layers, as ``output_hidden_states``) for ``layers`` (negative from the end).

    Raises:
        ValueError: an index outside [-(num_layers + 1), num_layers], naming it and the model's layer count.
    """
    resolved = []
    for index in layers:
        position = index + num_layers + 1 if index < 0 else index
        if not 0 <= position <= num_layers:
            raise ValueError(f"value_function['layers'] has {index}, but the model has {num_layers} decoder layers: "
                             f"hidden states 0 … {num_layers} (or -1 … -{num_layers + 1}).")
        resolved.append(position)
    return tuple(resolved)


class HiddenStateCapture:
    """Forward hooks that keep the chosen hidden states of every forward while :meth:`recording`.

    Args:
        model: the policy (PEFT / DDP wrappers allowed).
        layers: hidden-state indices as :func:`resolve_layers` returns them.
        detach: keep detached tensors (the stop-gradient of the ``head`` kind).
    """

    def __init__(self, model: nn.Module, layers: tuple, *, detach: bool):
        decoder = decoder_of(model)
        self.layers = layers
        self.detach = detach
        self._active = False
        self._calls: list[dict] = []
        modules = {0: decoder.embed_tokens, len(decoder.layers): decoder}
        modules.update({i + 1: layer for i, layer in enumerate(decoder.layers) if i + 1 < len(decoder.layers)})
        self._handles = [decoder.register_forward_pre_hook(self._pre_hook, with_kwargs=True)]
        for index in sorted(set(layers)):
            self._handles.append(modules[index].register_forward_hook(self._hook_for(index)))

    def remove(self) -> None:
        """Remove the hooks (the model runs as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def start(self, *, grad_only: bool) -> None:
        """Keep the hidden states of the forwards from now on; ``grad_only`` skips no-grad forwards (Unsloth's
        verification forwards) so only the loss's own forward counts."""
        self._calls, self._active, self._grad_only = [], True, grad_only

    def stop(self) -> None:
        """Keep nothing more (what was kept stays for :meth:`take`)."""
        self._active = False

    @contextmanager
    def recording(self, *, grad_only: bool):
        """:meth:`start` … :meth:`stop` around a block."""
        self.start(grad_only=grad_only)
        try:
            yield self
        finally:
            self.stop()

    def take(self) -> list[dict]:
        """The forwards recorded since :meth:`recording` began: ``[{"keep": [b, S] bool or None, index: [b, S, H]}]``."""
        calls, self._calls = self._calls, []
        return [call for call in calls if len(call) == len(self.layers) + 1]

    def _wanted(self) -> bool:
        return self._active and (torch.is_grad_enabled() or not self._grad_only)

    def _pre_hook(self, module, args, kwargs):
        if not self._wanted():
            return None
        mask = kwargs.get("attention_mask")
        # no 2-D mask: every position is a real token (Unsloth's sequence packing)
        keep = mask.to(torch.bool) if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        self._calls.append({"keep": keep})
        return None

    def _hook_for(self, index: int):
        def hook(module, args, output):
            if not self._wanted() or not self._calls:
                return None
            hidden = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", output)
            self._calls[-1][index] = hidden.detach() if self.detach else hidden
            return None

        return hook


def completion_features(calls: list[dict], layers: tuple, row_lengths: torch.Tensor, prompt_lengths: torch.Tensor,
                        completion_width: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per layer, the hidden state before each completion token: ``([B, T, H] per layer, valid [B, T] bool)``.

    Args:
        calls: :meth:`HiddenStateCapture.take`; the last forwards whose real tokens add up to Σ ``row_lengths``
            are used (an earlier, discarded forward of the same batch is skipped).
        row_lengths: [B] real tokens (prompt + completion) of each row, as the forward saw them.
        prompt_lengths: [B] real prompt tokens of each row.
        completion_width: T.

    Raises:
        RuntimeError: the recorded forwards do not hold the batch's real tokens (a forward layout this reader
            does not know, e.g. Unsloth's prefix grouper, which runs each prompt once per group).
    """
    total = int(row_lengths.sum())
    chosen, count = [], 0
    for call in reversed(calls):
        sample = call[layers[0]]
        keep = call["keep"] if call["keep"] is not None else torch.ones(sample.shape[:2], dtype=torch.bool,
                                                                         device=sample.device)
        chosen.insert(0, (call, keep))
        count += int(keep.sum())
        if count >= total:
            break
    if count != total:
        raise RuntimeError(
            f"value_function: the policy's forward held {count} real tokens, the batch has {total}: the head cannot "
            "align them. Under Unsloth, set UNSLOTH_GRPO_PREFIX_GROUPER=0 (its prefix grouper runs each prompt once "
            "per group).")
    device = chosen[0][1].device
    row_lengths, prompt_lengths = row_lengths.to(device), prompt_lengths.to(device)
    starts = torch.cumsum(row_lengths, 0) - row_lengths  # [B]
    offsets = prompt_lengths.unsqueeze(1) - 1 + torch.arange(completion_width, device=device).unsqueeze(0)  # [B, T]
    valid = (offsets >= 0) & (offsets < row_lengths.unsqueeze(1))  # [B, T]
    index = (starts.unsqueeze(1) + offsets.clamp(min=0)).where(valid, starts.unsqueeze(1)).clamp(max=max(total - 1, 0))
    features = []
    for layer in layers:
        stream = torch.cat([call[layer][keep] for call, keep in chosen], dim=0)  # [Σ real, H]
        features.append(stream[index])  # [B, T, H]
    return features, valid
