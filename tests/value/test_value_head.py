"""The value head's inputs: options checked once; the state before each completion token read from every layout
the policy's forward uses (TRL's left padding, Unsloth's left-packed rows and its sequence packing), each
against a slow reference: one unpadded row at a time through Hugging Face's ``output_hidden_states``."""
from __future__ import annotations

import pytest
import torch

from grpo_custom.value.capture import HiddenStateCapture, completion_features, resolve_layers
from grpo_custom.value.config import ValueFunctionConfig, parse_value_function
from grpo_custom.value.rollout import left_pack


def test_options_are_checked_once_and_name_the_culprit():
    assert parse_value_function({"kind": "shared_head", "layers": 1}).layers == (1,)
    assert parse_value_function(None) is None
    cases = [({"kind": "critic"}, r"value_function\['kind'\]='critic' is not valid; choose one of \['head', "),
             ({"lr": 0}, r"value_function\['lr'\] must be a finite number > 0, got 0"),
             ({"lam": 1.5}, r"value_function\['lam'\]=1.5 is outside \[0.0, 1.0\]"),
             ({"layers": []}, r"value_function\['layers'\] must be a non-empty list of ints"),
             ({"layers": [1, 1]}, r"lists a layer twice"),
             ({"warmup_steps": -1}, r"warmup_steps'\] must be an int >= 0"),
             ({"cliprange": 0.2}, r"unknown option\(s\) \['cliprange'\]; valid options: \['kind', ")]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_value_function(options)
    with pytest.raises(TypeError, match="value_function must be a dict"):
        parse_value_function(0.5)
    assert resolve_layers((-1, 0, 1), 2) == (2, 0, 1)
    with pytest.raises(ValueError, match=r"has 3, but the model has 2 decoder layers: hidden states 0 … 2"):
        resolve_layers((3,), 2)
    assert ValueFunctionConfig().to_dict()["layers"] == [-1]


def _batch(pad: int):
    """Prompts left-padded, completions right-padded: [B, P] + [B, C], and their masks."""
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14]]
    completions = [[20, 21, 22, 23], [24, 25], [26, 27, 28, 29, 30, 31]]
    width_p, width_c = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.tensor([[pad] * (width_p - len(p)) + p for p in prompts])
    completion_ids = torch.tensor([c + [pad] * (width_c - len(c)) for c in completions])
    return prompts, completions, prompt_ids, (prompt_ids != pad).long(), completion_ids, (completion_ids != pad).long()


@pytest.mark.parametrize("layout", ["trl", "left_packed", "sequence_packed"])
def test_the_state_before_each_completion_token_in_every_layout(tiny_model_dir, layout):
    from grpo_custom.testing.tiny_model import load_tiny_model

    model, tokenizer = load_tiny_model(tiny_model_dir)
    model.eval()
    pad = tokenizer.pad_token_id
    prompts, completions, prompt_ids, prompt_mask, completion_ids, completion_mask = _batch(pad)
    layers = resolve_layers((-1, 0, 1), model.config.num_hidden_layers)
    capture = HiddenStateCapture(model, layers, detach=True)
    ids = torch.cat([prompt_ids, completion_ids], 1)
    with torch.no_grad(), capture.recording(grad_only=False):
        if layout == "trl":
            model(input_ids=ids, attention_mask=torch.cat([prompt_mask, completion_mask], 1))
        elif layout == "left_packed":  # Unsloth's padded loop: two mini-batches of left-packed rows
            packed = left_pack(ids, pad)
            for rows in (slice(0, 2), slice(2, 3)):
                model(input_ids=packed[rows], attention_mask=(packed[rows] != pad).long())
        else:  # Unsloth's sequence packing: one row of every real token, positions restarting per sequence
            real = [p + c for p, c in zip(prompts, completions)]
            flat = torch.tensor([sum(real, [])])
            positions = torch.tensor([sum([list(range(len(r))) for r in real], [])])
            model(input_ids=flat, position_ids=positions, attention_mask=_block_diagonal(real))
    row_lengths = torch.tensor([len(p) + len(c) for p, c in zip(prompts, completions)])
    features, valid = completion_features(capture.take(), layers, row_lengths,
                                          torch.tensor([len(p) for p in prompts]), completion_ids.shape[1])
    capture.remove()
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        with torch.no_grad():
            reference = model(input_ids=torch.tensor([prompt + completion]), output_hidden_states=True).hidden_states
        for t in range(len(completion)):
            assert bool(valid[row, t])
            for feature, layer in zip(features, layers):  # the state that produced completion token t
                torch.testing.assert_close(feature[row, t], reference[layer][0, len(prompt) + t - 1],
                                           rtol=1e-4, atol=1e-5)
    assert not bool(valid[0, 5]) and not bool(valid[1, 3])  # past each completion's end (row 2 fills the width)


def _block_diagonal(rows) -> torch.Tensor:
    """A [1, 1, S, S] additive mask: causal inside each sequence, nothing across (what packed_seq_lengths does)."""
    total = sum(map(len, rows))
    allowed = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for row in rows:
        end = start + len(row)
        allowed[start:end, start:end] = torch.tril(torch.ones(len(row), len(row), dtype=torch.bool))
        start = end
    return torch.zeros(total, total).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
