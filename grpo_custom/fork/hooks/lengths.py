"""Completion length = tokens the model generated, everywhere (never the mask ``mask_truncated_completions`` zeroes)."""
from __future__ import annotations

import torch


def generated_lengths(completion_ids_list, tool_mask_list, device) -> torch.Tensor:
    """Tokens the model generated per completion of this process: [B] long, on ``device``.

    ``len(ids)`` (EOS included), or with tools the count of model tokens (``sum(tool_mask)``): TRL's
    ``completions/mean_length``. Called by the fork's ``advantage_estimator`` edit with TRL's lists, before
    any masking.
    """
    if tool_mask_list is not None:
        return torch.tensor([int(sum(mask)) for mask in tool_mask_list], dtype=torch.long, device=device)
    return torch.tensor([len(ids) for ids in completion_ids_list], dtype=torch.long, device=device)


def lengths_from_padded(completion_ids: torch.Tensor, completion_mask: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Tokens generated per row of a right-padded batch whose mask may be zeroed for truncated rows: [B].

    A row with mask tokens has ``mask.sum()`` tokens. A row that ``mask_truncated_completions`` zeroed was
    truncated (its last token is neither EOS nor pad, TRL's rule): its length is the position of its last
    non-pad token + 1.

    Args:
        completion_ids: [B, T] right-padded token ids.
        completion_mask: [B, T] TRL's completion mask (zero rows for masked truncated completions).
        pad_token_id: the padding id.
    """
    counted = completion_mask.sum(dim=1)  # [B]
    positions = torch.arange(1, completion_ids.shape[1] + 1, device=completion_ids.device)  # [T]
    last_real = ((completion_ids != pad_token_id).long() * positions).max(dim=1).values  # [B]
    return torch.where(counted > 0, counted, last_real.to(counted.dtype))
