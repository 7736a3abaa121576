"""GAE (grpo_custom.compute_gae), the chunked scan, adaptive λ and the registered ``gae`` estimator: values, not smoke."""
from __future__ import annotations

import math

import pytest
import torch

from grpo_custom.algorithms.estimators import AdvantageInputs, call_estimator, get_advantage_estimator
from grpo_custom.algorithms.estimators.gae import adaptive_lambda, compute_gae, reverse_affine_scan

F64 = torch.float64


def slow_gae(rewards, values, mask, gamma, lam):
    """GAE from the formula, one token at a time in Python floats (reference, verl's semantics).

    Backwards over t; a token with mask 0 changes nothing and takes the running advantage.
    ``lam`` is a list (one λ per row).
    """
    advantages = []
    for row in range(len(rewards)):
        running, next_value = 0.0, 0.0
        out = [0.0] * len(rewards[row])
        for t in range(len(rewards[row]) - 1, -1, -1):
            if mask[row][t]:
                delta = rewards[row][t] + gamma * next_value - values[row][t]
                running = delta + gamma * lam[row] * running
                next_value = values[row][t]
            out[t] = running
        advantages.append(out)
    return advantages


def random_case(rows=6, length=23, seed=0, holes=True):
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(rows, length, generator=generator, dtype=F64)
    values = torch.randn(rows, length, generator=generator, dtype=F64)
    lengths = torch.randint(0, length + 1, (rows,), generator=generator)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)  # [N, T] right padding
    if holes:  # tool-output tokens inside completions
        mask &= torch.rand(rows, length, generator=generator) > 0.25
    return rewards, values, mask


def test_lambda_one_gamma_one_zero_values_is_return_to_go():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.5], [3.0, -1.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    advantages, returns = compute_gae(rewards, torch.zeros_like(rewards), mask)
    # Σ_{s ≥ t} r_s over scored tokens; padding past the end has A = 0
    expected = torch.tensor([[3.5, 2.5, 2.5, 0.5], [2.0, -1.0, 0.0, 0.0]], dtype=F64)
    assert torch.equal(advantages, expected)
    assert torch.equal(returns, expected)  # R = A + V with V = 0


def test_lambda_zero_is_the_td_residual():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 0.0]], dtype=F64)
    values = torch.tensor([[0.2, 0.4, 0.8], [1.0, -1.0, 3.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.0)
    # δ_t = r_t + γ·V_{t+1} − V_t, V after the last scored token = 0
    expected = torch.tensor([[0.0 + 0.9 * 0.4 - 0.2, 0.0 + 0.9 * 0.8 - 0.4, 1.0 - 0.8],
                             [0.5 + 0.9 * -1.0 - 1.0, 2.0 - (-1.0), 0.0]], dtype=F64)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(returns, expected + values, rtol=0, atol=1e-15)


def test_hand_computed_case_with_a_hole():
    # tokens: scored, hole (tool output, mask 0), scored; γ = 0.5, λ = 0.5
    rewards = torch.tensor([[0.0, 9.0, 1.0]], dtype=F64)  # the hole's reward is ignored
    values = torch.tensor([[1.0, 7.0, 2.0]], dtype=F64)  # the hole's value is skipped
    mask = torch.tensor([[1, 0, 1]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.5, lam=0.5)
    a2 = 1.0 + 0.5 * 0.0 - 2.0  # −1
    a0 = (0.0 + 0.5 * 2.0 - 1.0) + 0.25 * a2  # δ_0 = 0 uses V_next = V_2; then γλ·A_2
    assert advantages.tolist() == [[a0, a2, a2]]  # the hole carries the running advantage
    assert returns.tolist() == [[a0 + 1.0, a2 + 7.0, a2 + 2.0]]


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.0, 0.7), (0.5, 1.0), (1.0, 0.3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_slow_reference(gamma, lam, seed):
    rewards, values, mask = random_case(seed=seed)
    advantages, returns = compute_gae(rewards, values, mask, gamma=gamma, lam=lam)
    expected = torch.tensor(slow_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, [lam] * 6), dtype=F64)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(returns, expected + values, rtol=0, atol=1e-13)


def test_per_sequence_lambda_and_adaptive_lambda():
    rewards, values, mask = random_case(seed=3)
    lam = torch.tensor([0.0, 0.3, 0.9, 1.0, 0.5, 0.95], dtype=F64)
    advantages, _ = compute_gae(rewards, values, mask, gamma=0.97, lam=lam)
    expected = slow_gae(rewards.tolist(), values.tolist(), mask.tolist(), 0.97, lam.tolist())
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-13)
    for row in range(6):  # each row equals a scalar-λ call on that row alone
        alone, _ = compute_gae(rewards[row:row + 1], values[row:row + 1], mask[row:row + 1], gamma=0.97,
                               lam=float(lam[row]))
        torch.testing.assert_close(advantages[row:row + 1], alone, rtol=0, atol=1e-14)


def verl_style_whiten(advantages, mask):
    """(A − mean)·rsqrt(var + 1e-8), Bessel var over the scored tokens, every position shifted (verl's whitening)."""
    weights = mask.to(advantages.dtype)
    count = weights.sum()
    mean = (advantages * weights).sum() / (count + 1e-8)  # verl's masked_mean adds 1e-8 to the count
    variance = (((advantages - mean) ** 2) * weights).sum() / (count + 1e-8) * count / (count - 1)
    return (advantages - mean) / torch.sqrt(variance + 1e-8)


def test_whiten_equals_the_verl_definition_and_keeps_returns():
    rewards, values, mask = random_case(seed=4)
    raw, raw_returns = compute_gae(rewards, values, mask, gamma=0.95, lam=0.9)
    whitened, returns = compute_gae(rewards, values, mask, gamma=0.95, lam=0.9, whiten=True)
    torch.testing.assert_close(whitened, verl_style_whiten(raw, mask), rtol=0, atol=1e-13)
    assert torch.equal(returns, raw_returns)  # returns are A + V before whitening
    scored = whitened[mask]
    assert abs(scored.mean().item()) < 1e-9 and abs(scored.std().item() - 1.0) < 1e-6  # 1e-8 in the count


def test_whiten_statistics_span_processes_through_process_sum():
    rewards, values, mask = random_case(seed=5, holes=False)
    calls = []

    def two_identical_processes(tensor):  # what an all-reduce returns when the other rank holds the same batch
        calls.append(tensor.shape)
        return 2 * tensor

    whitened, _ = compute_gae(rewards, values, mask, gamma=0.9, lam=0.9, whiten=True,
                              process_sum=two_identical_processes)
    raw, _ = compute_gae(rewards, values, mask, gamma=0.9, lam=0.9)
    doubled = verl_style_whiten(torch.cat([raw, raw]), torch.cat([mask, mask]))[: raw.shape[0]]
    torch.testing.assert_close(whitened, doubled, rtol=0, atol=1e-13)
    assert len(calls) == 2  # sums and counts, then the squared deviations
    local, _ = compute_gae(rewards, values, mask, gamma=0.9, lam=0.9, whiten=True, process_sum=None)
    assert not torch.allclose(local, whitened, rtol=0, atol=1e-9)  # Bessel's n − 1 differs: the sum was used


def test_masked_tokens_change_nothing_but_carry():
    rewards, values, _ = random_case(rows=3, length=12, seed=6, holes=False)
    dense_mask = torch.ones(3, 12, dtype=torch.bool)
    dense, _ = compute_gae(rewards, values, dense_mask, gamma=0.9, lam=0.8)
    # insert 5 masked tokens with arbitrary rewards and values after token 4
    junk = torch.full((3, 5), 1e3, dtype=F64)
    holes = torch.cat([rewards[:, :5], junk, rewards[:, 5:]], 1), torch.cat([values[:, :5], -junk, values[:, 5:]], 1)
    mask = torch.cat([dense_mask[:, :5], torch.zeros(3, 5, dtype=torch.bool), dense_mask[:, 5:]], 1)
    sparse, _ = compute_gae(*holes, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(torch.cat([sparse[:, :5], sparse[:, 10:]], 1), dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(sparse[:, 5:10], sparse[:, 10:11].expand(3, 5), rtol=0, atol=1e-14)  # carried


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_reverse_affine_scan_matches_the_loop(chunk):
    generator = torch.Generator().manual_seed(7)
    c = torch.randn(4, 37, generator=generator, dtype=F64)
    d = torch.rand(4, 37, generator=generator, dtype=F64)
    d[0, 10] = 0.0  # a reset
    d[1] = 1.0
    expected = torch.zeros_like(c)
    running = torch.zeros(4, dtype=F64)
    for t in range(36, -1, -1):
        running = c[:, t] + d[:, t] * running
        expected[:, t] = running
    torch.testing.assert_close(reverse_affine_scan(c, d, chunk), expected, rtol=1e-14, atol=1e-14)


def test_long_completions_stay_finite_and_accurate_in_float32():
    rewards, values, mask = random_case(rows=4, length=4096, seed=8, holes=True)
    expected = torch.tensor(slow_gae(rewards.tolist(), values.tolist(), mask.tolist(), 0.999, [0.9] * 4), dtype=F64)
    advantages, _ = compute_gae(rewards.float(), values.float(), mask, gamma=0.999, lam=0.9)
    assert torch.isfinite(advantages).all()
    torch.testing.assert_close(advantages.double(), expected, rtol=0, atol=2e-5)


def test_input_errors():
    r = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="values must have the shape"):
        compute_gae(r, torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="only 0 and 1"):
        compute_gae(r, r, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="gamma must lie in"):
        compute_gae(r, r, torch.ones(2, 3), gamma=1.5)
    with pytest.raises(ValueError, match=r"lam must be a number or a tensor of shape \[2\]"):
        compute_gae(r, r, torch.ones(2, 3), lam=torch.ones(3))
    with pytest.raises(ValueError, match="at least 2 scored tokens"):
        compute_gae(r, r, torch.tensor([[1, 0, 0], [0, 0, 0]]), whiten=True)


def test_adaptive_lambda_values_and_errors():
    lam = adaptive_lambda(torch.tensor([0, 10, 20, 40, 200, 1000]))
    expected = [0.0, 0.0, 0.0, 0.5, 0.9, 1 - 1 / 50]  # 1 − 1/(0.05·l), clamped to [0, 1]
    torch.testing.assert_close(lam, torch.tensor(expected), rtol=0, atol=1e-7)
    torch.testing.assert_close(adaptive_lambda(torch.tensor([10.0]), alpha=0.2), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="alpha"):
        adaptive_lambda(torch.tensor([3]), alpha=0)
    with pytest.raises(ValueError, match="sequence 1 has -2"):
        adaptive_lambda(torch.tensor([3.0, -2.0]))


def gae_inputs(seed=9, nan_row=None):
    rewards_tokens, values, mask = random_case(rows=8, length=10, seed=seed, holes=False)
    mask[:, 0] = True  # every completion has a token
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(seed), dtype=F64)
    if nan_row is not None:
        rewards[nan_row] = math.nan
    return AdvantageInputs(rewards=rewards, num_generations=4, completion_lengths=mask.sum(1), completion_mask=mask,
                           values=values), mask


def test_gae_estimator_is_whitened_compute_gae_on_outcome_rewards():
    inputs, mask = gae_inputs()
    got = call_estimator(get_advantage_estimator("gae"), inputs, {"gamma": 0.95, "lam": 0.9})
    last = mask.long().cumsum(1).argmax(1)  # last scored token
    token_rewards = torch.zeros(8, 10, dtype=F64)
    token_rewards[torch.arange(8), last] = inputs.rewards
    want, _ = compute_gae(token_rewards, inputs.values, mask, gamma=0.95, lam=0.9, whiten=True)
    torch.testing.assert_close(got, torch.where(mask, want, 0.0), rtol=0, atol=1e-13)
    adaptive = call_estimator(get_advantage_estimator("gae"), inputs, {"lam": "adaptive", "alpha": 0.5})
    want, _ = compute_gae(token_rewards, inputs.values, mask, lam=adaptive_lambda(mask.sum(1), 0.5), whiten=True)
    torch.testing.assert_close(adaptive, torch.where(mask, want, 0.0), rtol=0, atol=1e-13)


def test_gae_estimator_unscorable_row_is_zero_and_leaves_the_statistics():
    inputs, mask = gae_inputs(nan_row=2)
    got = call_estimator(get_advantage_estimator("gae"), inputs, {})
    assert torch.equal(got[2], torch.zeros(10, dtype=F64))
    keep = [0, 1, 3, 4, 5, 6, 7]
    others = AdvantageInputs(rewards=inputs.rewards[keep], num_generations=1, completion_mask=mask[keep],
                             values=inputs.values[keep])
    torch.testing.assert_close(got[keep], call_estimator(get_advantage_estimator("gae"), others, {}), rtol=0, atol=1e-13)


def test_gae_estimator_without_values_names_the_option():
    inputs, _ = gae_inputs()
    inputs.values = None
    with pytest.raises(ValueError, match=r"'gae' needs inputs.values.*value_function="):
        call_estimator(get_advantage_estimator("gae"), inputs, {})
    with pytest.raises(ValueError, match="lam must be a number in \\[0, 1\\] or 'adaptive'"):
        call_estimator(get_advantage_estimator("gae"), gae_inputs()[0], {"lam": "adaptiv"})
