"""grpo_custom.unsloth.entropy_kernel: chunked log-probs + entropies in one LM-head pass, against full-logits torch.

The reference builds the whole [B, T, V] logits tensor in float64 and lets autograd differentiate
log_softmax; the kernel must give the same values and the same gradients for h, W and b.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_custom.unsloth.decisions import SmallBatchRule
from grpo_custom.unsloth.entropy_kernel import LogitTransform, chunk_bounds, chunked_logps_and_entropies
from grpo_custom.unsloth.entropy_plan import EntropyKernelPlan, head_matmul_dtype, keeps_log_probs

TRANSFORMS = {
    "plain": {},
    "temperature": {"temperature": 0.7},
    "scaled_softcapped": {"logit_scale_multiply": 0.8, "logit_scale_divide": 1.25, "logit_softcapping": 4.0,
                          "temperature": 1.3},
}


def reference(hidden, lm_head, bias, ids, transform: dict):
    """(log p(y), H) from full float64 logits, differentiable by autograd."""
    logits = torch.nn.functional.linear(hidden, lm_head, bias)  # [B, T, V]
    if transform.get("logit_scale_multiply"):
        logits = logits * transform["logit_scale_multiply"]
    if transform.get("logit_scale_divide"):
        logits = logits / transform["logit_scale_divide"]
    if transform.get("logit_softcapping"):
        cap = transform["logit_softcapping"]
        logits = cap * torch.tanh(logits / cap)
    logits = logits / transform.get("temperature", 1.0)
    log_p = torch.log_softmax(logits, dim=-1)
    return log_p.gather(-1, ids.unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


def leaves(B=3, T=5, H=12, V=40, bias=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=generator, dtype=torch.float64)
    lm_head = torch.randn(V, H, generator=generator, dtype=torch.float64) / math.sqrt(H) * 3
    b = torch.randn(V, generator=generator, dtype=torch.float64) if bias else None
    ids = torch.randint(0, V, (B, T), generator=generator)
    upstream = torch.randn(2, B, T, generator=generator, dtype=torch.float64)
    return hidden, lm_head, b, ids, upstream


def gradients(function, hidden, lm_head, bias, ids, upstream, head_grad, *, use_logps=True, use_entropy=True, **options):
    hidden = hidden.clone().requires_grad_()
    lm_head = lm_head.clone().requires_grad_(head_grad)
    bias = None if bias is None else bias.clone().requires_grad_()
    logps, entropies = function(hidden, lm_head, bias, ids, **options)
    objective = 0.0
    if use_logps:
        objective = objective + (logps * upstream[0]).sum()
    if use_entropy:
        objective = objective + (entropies * upstream[1]).sum()
    objective.backward()
    return logps.detach(), entropies.detach(), hidden.grad, lm_head.grad, None if bias is None else bias.grad


def kernel_node(output: torch.Tensor):
    """The kernel's autograd node (its context) behind ``output`` (a reshape of the kernel's result)."""
    node = output.grad_fn
    while type(node).__name__ != "ChunkedLogProbsAndEntropyBackward":
        node = node.next_functions[0][0]
    return node


def as_transform(options: dict) -> LogitTransform:
    """The kernel's transform for reference()'s option names (Unsloth's argument names)."""
    return LogitTransform(options.get("logit_scale_multiply", 0.0), options.get("logit_scale_divide", 0.0),
                          options.get("logit_softcapping", 0.0), options.get("temperature", 1.0))


def kernel(hidden, lm_head, bias, ids, chunks=4, **transform):
    return chunked_logps_and_entropies(hidden, lm_head, ids, chunks, as_transform(transform), lm_head_bias=bias)


def reference_fn(hidden, lm_head, bias, ids, chunks=4, **transform):
    return reference(hidden, lm_head, bias, ids, transform)


@pytest.mark.parametrize("transform", list(TRANSFORMS), ids=list(TRANSFORMS))
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("chunks", [1, 4, 15])
def test_values_and_gradients_equal_full_logits_reference(transform, bias, chunks):
    hidden, lm_head, b, ids, upstream = leaves(bias=bias)
    got = gradients(kernel, hidden, lm_head, b, ids, upstream, True, chunks=chunks, **TRANSFORMS[transform])
    want = gradients(reference_fn, hidden, lm_head, b, ids, upstream, True, **TRANSFORMS[transform])
    names = ["logps", "entropies", "grad hidden", "grad lm_head", "grad bias"]
    for name, mine, theirs in zip(names, got, want):
        if theirs is None:
            assert mine is None, name
            continue
        # the kernel computes in float32 (as Unsloth does) from float64 leaves
        scale = float(theirs.abs().max())
        assert float((mine.double() - theirs).abs().max()) <= 2e-6 * max(scale, 1.0), (name, scale)


@pytest.mark.parametrize("use_logps, use_entropy", [(True, False), (False, True)], ids=["logps_only", "entropy_only"])
def test_gradient_when_only_one_output_is_used(use_logps, use_entropy):
    hidden, lm_head, _, ids, upstream = leaves(seed=3)
    got = gradients(kernel, hidden, lm_head, None, ids, upstream, False, use_logps=use_logps, use_entropy=use_entropy)
    want = gradients(reference_fn, hidden, lm_head, None, ids, upstream, False, use_logps=use_logps,
                     use_entropy=use_entropy)
    assert got[3] is None  # frozen head: no gradient computed for it
    assert torch.allclose(got[2].double(), want[2], atol=2e-6, rtol=1e-5)


def test_frozen_head_trains_hidden_only_and_float32_inputs_keep_their_dtype():
    hidden, lm_head, _, ids, upstream = leaves(seed=5)
    hidden, lm_head = hidden.float().requires_grad_(), lm_head.float()
    logps, entropies = chunked_logps_and_entropies(hidden, lm_head, ids, 3)
    ((logps * upstream[0].float()).sum() + (entropies * upstream[1].float()).sum()).backward()
    assert logps.dtype == entropies.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    assert logps.shape == entropies.shape == ids.shape and lm_head.grad is None


def test_bfloat16_head_matches_reference_on_the_same_bfloat16_logits():
    hidden, lm_head, _, ids, upstream = leaves(seed=7, H=16, V=64)
    hidden16, head16 = hidden.bfloat16().requires_grad_(), lm_head.bfloat16()
    logps, entropies = chunked_logps_and_entropies(hidden16, head16, ids, 4)
    ((logps * upstream[0].float()).sum() + (entropies * upstream[1].float()).sum()).backward()
    assert hidden16.grad.dtype == torch.bfloat16
    logits = (hidden16.detach() @ head16.t()).double()  # the kernel's matmul, in the matmul dtype
    log_p = torch.log_softmax(logits, -1)
    assert torch.allclose(logps.double(), log_p.gather(-1, ids.unsqueeze(-1)).squeeze(-1), atol=1e-5)
    assert torch.allclose(entropies.double(), -(log_p.exp() * log_p).sum(-1), atol=1e-5)
    expected = hidden.clone().requires_grad_()
    ref_logps, ref_entropies = reference(expected, lm_head, None, ids, {})
    ((ref_logps * upstream[0]).sum() + (ref_entropies * upstream[1]).sum()).backward()
    relative = (hidden16.grad.double() - expected.grad).abs().max() / expected.grad.abs().max()
    assert relative < 0.05  # bfloat16 rounding of h, W and the gradient; a wrong formula is off by O(1)


def test_fp32_lm_head_projects_in_float32_under_autocast():
    hidden, lm_head, _, ids, _ = leaves(seed=9, H=16, V=64)
    hidden16, head16 = hidden.bfloat16(), lm_head.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fp32_logps, _ = chunked_logps_and_entropies(hidden16, head16, ids, 2, fp32_lm_head=True)
        autocast_logps, _ = chunked_logps_and_entropies(hidden16.float(), head16.float(), ids, 2, fp32_lm_head=False)
    exact = torch.log_softmax(hidden16.double() @ head16.double().t(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert (fp32_logps.double() - exact).abs().max() < 1e-5
    assert (autocast_logps.double() - exact).abs().max() > 1e-4  # bfloat16 matmul under autocast: visibly coarser


def test_entropy_under_autocast_is_float32_math_on_the_autocast_logits():
    hidden, lm_head, _, ids, upstream = leaves(seed=13, H=16, V=64)
    hidden, lm_head = (hidden * 3).float().requires_grad_(), lm_head.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps, entropies = chunked_logps_and_entropies(hidden, lm_head, ids, 2)
        logits = (hidden.detach() @ lm_head.t())  # bfloat16 under autocast, as the kernel's matmul
    assert logits.dtype == torch.bfloat16
    log_p = torch.log_softmax(logits.double(), -1)
    assert torch.allclose(entropies.double(), -(log_p.exp() * log_p).sum(-1), atol=1e-5)
    assert torch.allclose(logps.double(), log_p.gather(-1, ids.unsqueeze(-1)).squeeze(-1), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a backward started inside autocast still works
        ((logps * upstream[0].float()).sum() + (entropies * upstream[1].float()).sum()).backward()
    assert hidden.grad.dtype == torch.float32 and bool(torch.isfinite(hidden.grad).all())


def test_kept_log_probs_are_released_by_backward_and_a_second_backward_says_so():
    hidden, lm_head, _, ids, upstream = leaves(seed=11)
    hidden = hidden.float().requires_grad_()
    logps, entropies = chunked_logps_and_entropies(hidden, lm_head.float(), ids, 3)
    objective = (logps * upstream[0].float()).sum() + (entropies * upstream[1].float()).sum()
    node = kernel_node(logps)
    assert len(node.kept_log_probs) == 3 and node.kept_log_probs[0].shape == (5, 40)
    objective.backward(retain_graph=True)
    assert node.kept_log_probs is None
    with pytest.raises(RuntimeError, match="backward ran twice"):
        objective.backward()


def test_shape_errors_name_the_culprit():
    hidden, lm_head, _, ids, _ = leaves()
    with pytest.raises(ValueError, match="hidden size 12 does not match the output head"):
        chunked_logps_and_entropies(hidden, lm_head[:, :6], ids)
    with pytest.raises(ValueError, match=r"token ids \(3, 4\) do not match hidden states \(3, 5, 12\)"):
        chunked_logps_and_entropies(hidden, lm_head, ids[:, :4])


@pytest.mark.parametrize("rows, chunks, cap, expected", [
    (10, 4, 0, (0, 2, 5, 7, 10)),
    (10, 1, 3, (0, 2, 5, 7, 10)),  # a cap of 3 rows per chunk needs 4 chunks
    (3, 8, 0, (0, 1, 2, 3)),  # never more chunks than rows
    (0, 4, 0, (0, 0)),
])
def test_chunk_bounds(rows, chunks, cap, expected):
    assert chunk_bounds(rows, chunks, cap) == expected


def test_max_rows_per_chunk_environment_default(monkeypatch):
    hidden, lm_head, _, ids, _ = leaves()
    monkeypatch.setenv("UNSLOTH_GRPO_MAX_ROWS_PER_CHUNK", "4")
    logps, _ = chunked_logps_and_entropies(hidden.float().requires_grad_(), lm_head.float(), ids, 1)
    assert len(kernel_node(logps).kept_log_probs) == 4  # 15 rows, at most 4 per chunk


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(2, 50), rows=st.integers(1, 12), scale=st.floats(0.0, 20.0), seed=st.integers(0, 2**16))
def test_entropy_is_between_zero_and_log_vocab_and_log_probs_are_normalised(vocab, rows, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, rows, 6, generator=generator) * scale
    lm_head = torch.randn(vocab, 6, generator=generator)
    ids = torch.randint(0, vocab, (1, rows), generator=generator)
    logps, entropies = chunked_logps_and_entropies(hidden, lm_head, ids, 3)
    assert bool((entropies >= -1e-5).all()) and bool((entropies <= math.log(vocab) + 1e-5).all())
    assert bool((logps <= 1e-6).all())
    all_ids = torch.arange(vocab).repeat(rows, 1)  # every token of every row: probabilities sum to 1
    full_logps, _ = chunked_logps_and_entropies(hidden[0].unsqueeze(1).expand(rows, vocab, 6), lm_head, all_ids, 2)
    assert torch.allclose(full_logps.exp().sum(-1), torch.ones(rows), atol=1e-4)


def test_logit_transform_is_unsloths_order():
    transform = LogitTransform(scale_multiply=2.0, scale_divide=4.0, softcapping=1.0, temperature=0.5)
    logits = torch.tensor([[0.0, 1.0, -3.0]])
    assert torch.allclose(transform.apply(logits), torch.tanh(logits * 2.0 / 4.0) / 0.5)


RULE = SmallBatchRule(max_width=1024, max_minibatches=8)  # the bounds read from unsloth_zoo 2026.10.7-.9


def plan(mode="auto", total_rows=16, scorer_keeps_logits=True):
    return EntropyKernelPlan(mode=mode, total_rows=total_rows, multiplier=4,
                             scorer_keeps_logits=scorer_keeps_logits, small_batch=RULE)


PLAN = plan()


@pytest.mark.parametrize("plan, rows, width, chunks, kept", [
    (PLAN, 16, 4096, 64, True),  # one mini-batch: Unsloth keeps its logits whatever the width
    (PLAN, 2, 1024, 8, True),  # 8 mini-batches of width ≤ 1024
    (PLAN, 2, 1025, 8, False),  # 8 mini-batches, too wide: Unsloth offloads
    (plan(total_rows=18), 2, 512, 8, False),  # 9 mini-batches: Unsloth offloads
    (PLAN, 1, 9000, 64, True),  # the packed call: one row of every token, total_rows × multiplier chunks
    (PLAN, 1, 900, 4, False),  # a one-row padded mini-batch of 16: offloaded
    (plan(scorer_keeps_logits=False), 16, 8, 64, False),  # Unsloth's fused-linear scorer keeps no logits (10.9)
    (plan(scorer_keeps_logits=False), 1, 9000, 64, False),  # ... nor in the packed call
    (plan("keep_log_probs", 18), 2, 5000, 8, True),
    (plan("recompute"), 16, 8, 64, False),
])
def test_auto_keeps_log_probs_exactly_where_unsloths_log_prob_path_keeps_logits(plan, rows, width, chunks, kept):
    assert keeps_log_probs(plan, rows, width, chunks) is kept


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_auto_runs_unsloths_kernel_beside_16_bit_logits(dtype):
    """Unsloth keeps 16-bit chunk logits when the LM head runs in 16 bits; float32 log-probs would double that
    (2.01x base memory on an H200, benchmarks/results/gpu-h200-2026-11-30.md), so auto does not keep them."""
    assert keeps_log_probs(PLAN, 16, 4096, 64, torch.float32) is True
    assert keeps_log_probs(PLAN, 16, 4096, 64, dtype) is False
    assert keeps_log_probs(PLAN, 1, 9000, 64, dtype) is False  # the packed call too
    assert keeps_log_probs(plan("keep_log_probs"), 16, 4096, 64, dtype) is True  # an explicit choice stands


def test_head_matmul_dtype_follows_fp32_head_autocast_and_the_head():
    head16 = torch.zeros(8, 4, dtype=torch.bfloat16)
    assert head_matmul_dtype(head16, fp32_lm_head=False) == torch.bfloat16
    assert head_matmul_dtype(head16, fp32_lm_head=True) == torch.float32
    assert head_matmul_dtype(head16.float(), fp32_lm_head=False) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head_matmul_dtype(head16.float(), fp32_lm_head=False) == torch.bfloat16

