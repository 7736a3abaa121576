"""Unsloth's left-packed token layout for GRPO log-probs (unsloth 2026.10.7).

Unsloth moves each row's pad tokens to its end (``left_pack_padding``) and scores a window of the
last ``W = T + max_left_pad`` positions, T being the completion width. Row b's prompt has
``left_pad_b`` pad tokens, so its completion token t sits at window column
``(W − T) − left_pad_b + t``. Generation-time log-probs and the loss's tensors use that [B, W]
layout; grpo-custom's completion-aligned tensors are [B, T].
"""
from __future__ import annotations

import torch


def completion_columns(prompt_ids: torch.Tensor, pad_token_id: int, completion_width: int,
                       window_width: int) -> torch.Tensor:
    """Window column of every completion token: [B, T] long tensor."""
    left_pads = (prompt_ids == pad_token_id).sum(dim=1)  # [B]
    shift = (window_width - completion_width) - left_pads  # [B]
    offsets = torch.arange(completion_width, device=prompt_ids.device)
    return (offsets.unsqueeze(0) + shift.unsqueeze(1)).clamp(max=window_width - 1)  # [B, T]


def window_to_completion(values: torch.Tensor, prompt_ids: torch.Tensor, pad_token_id: int,
                         completion_width: int) -> torch.Tensor:
    """[B, W] window-layout values → [B, T] completion-aligned (unchanged when W == T)."""
    if values.shape[1] == completion_width:
        return values
    columns = completion_columns(prompt_ids, pad_token_id, completion_width, values.shape[1]).to(values.device)
    return values.gather(1, columns)


def completion_to_window(values: torch.Tensor, prompt_ids: torch.Tensor, pad_token_id: int,
                         window_width: int) -> torch.Tensor:
    """[B, T] completion-aligned values → [B, W] window layout (zeros outside the completion)."""
    if values.shape[1] == window_width:
        return values
    columns = completion_columns(prompt_ids, pad_token_id, values.shape[1], window_width).to(values.device)
    return values.new_zeros(values.shape[0], window_width).scatter(1, columns, values)
