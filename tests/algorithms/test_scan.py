"""GAE's scans (grpo_custom.algorithms.estimators.scan): the matrix-product sum, the packing, the CPU thread policy."""
from __future__ import annotations

import pytest
import torch

from grpo_custom.algorithms.estimators import scan
from grpo_custom.algorithms.estimators.gae import compute_gae
from grpo_custom.algorithms.estimators.scan import discounted_reverse_sum, pack_scored

F64 = torch.float64


def loop_sum(contributions, discounts):
    """G_t = c_t + ρ·G_{t+1}, one token at a time (the reference)."""
    out = torch.zeros_like(contributions)
    running = torch.zeros_like(contributions[:, 0])
    for t in range(contributions.shape[1] - 1, -1, -1):
        running = contributions[:, t] + discounts * running
        out[:, t] = running
    return out


@pytest.mark.parametrize("length", [1, 5, 64, 65, 200])
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.95, 1.0])
def test_discounted_reverse_sum_matches_the_loop(length, rho):
    c = torch.randn(5, length, generator=torch.Generator().manual_seed(length), dtype=F64)
    got = discounted_reverse_sum(c, rho)
    torch.testing.assert_close(got, loop_sum(c, torch.full((5,), rho, dtype=F64)), rtol=0, atol=1e-13)


def test_discounted_reverse_sum_per_row_discounts_and_out_buffer():
    c = torch.randn(4, 130, generator=torch.Generator().manual_seed(1), dtype=F64)
    rho = torch.tensor([0.0, 0.5, 0.99, 1.0], dtype=F64)
    torch.testing.assert_close(discounted_reverse_sum(c, rho), loop_sum(c, rho), rtol=0, atol=1e-13)
    same = torch.full((4, 1), 0.9, dtype=F64)  # equal per-row values take the shared-matrix path
    buffer = torch.empty(4, 128, dtype=F64)
    got = discounted_reverse_sum(c[:, :128].contiguous(), same, out=buffer)
    assert got.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(got, loop_sum(c[:, :128], same[:, 0]), rtol=0, atol=1e-13)


def test_small_discounts_in_float32_stay_accurate():
    # 0.2^k is subnormal in float32 from k = 55 on: those powers are taken as 0, below round-off
    c = torch.randn(3, 256, generator=torch.Generator().manual_seed(2), dtype=F64)
    got = discounted_reverse_sum(c.float(), 0.2)
    torch.testing.assert_close(got.double(), loop_sum(c, torch.full((3,), 0.2, dtype=F64)), rtol=0, atol=1e-5)


def test_pack_scored_positions():
    prefix = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert pack_scored(prefix) is None  # the GRPO layout needs no packing
    holes = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    # scored tokens before t: a scored token's packed slot, else the slot of the next scored token
    assert pack_scored(holes).tolist() == [[0, 1, 1, 2], [0, 0, 0, 1]]


def test_compute_gae_restores_the_thread_count_and_keeps_results_apart():
    generator = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(2, 6, 300, generator=generator).unbind(0)
    mask = torch.rand(6, 300, generator=generator) > 0.2  # holes: the packed path and its work buffers
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, first_returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
        assert torch.get_num_threads() == 2
        kept = first.clone(), first_returns.clone()
        compute_gae(values, rewards, ~mask, gamma=0.5, lam=0.5)  # reuses the work buffers
        assert torch.equal(first, kept[0]) and torch.equal(first_returns, kept[1])  # results never live in them
        scan.CPU_ONE_THREAD = False
        try:
            with_threads, _ = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
        finally:
            scan.CPU_ONE_THREAD = True
        torch.testing.assert_close(with_threads, first, rtol=1e-6, atol=1e-6)  # BLAS may block differently
    finally:
        torch.set_num_threads(previous)


def test_packing_keeps_full_rows_and_drops_what_unscored_tokens_hold():
    from tests.algorithms.test_gae import slow_gae

    generator = torch.Generator().manual_seed(4)
    rewards, values = torch.randn(2, 3, 70, generator=generator, dtype=F64).unbind(0)
    mask = torch.ones(3, 70, dtype=torch.bool)  # row 0: every token scored (its last slot is a real one)
    mask[1, 10:13] = False  # row 1: a tool's output inside the completion, scored to the end
    mask[2, :3] = False  # row 2: unscored tokens first, a hole, then padding
    mask[2, 30:31] = False
    mask[2, 60:] = False
    expected = torch.tensor(slow_gae(rewards.tolist(), values.tolist(), mask.tolist(), 0.9, [0.8] * 3), dtype=F64)
    rewards[~mask] = float("nan")  # what a skipped token holds is never read
    values[~mask] = float("nan")
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(returns[mask], (expected + values)[mask], rtol=0, atol=1e-13)
