"""Tests for grpo_custom.algorithms.kl: formulas, clamping, straight-through gradients, and the documented
bias / expected-gradient claims checked exactly on small categorical distributions."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_custom.algorithms.kl import KL_KINDS, kl_estimate, sequence_kl


def _clamped_k3(logp, ref):
    """k3 of the log-ratio limited to ±20, capped at 10 (k3 ≥ 0, so the lower cap of −10 never binds)."""
    bound = torch.tensor(20.0, dtype=logp.dtype)
    d = torch.maximum(torch.minimum(logp - ref, bound), -bound)
    return torch.minimum(torch.exp(-d) - 1 + d, torch.tensor(10.0, dtype=logp.dtype))


# Independent reference formulas, written with d = logp − logp_ref (the opposite sign of the module's Δ).
REFERENCE = {
    "k1": lambda lp, ref: lp - ref,
    "k2": lambda lp, ref: (lp - ref) ** 2 / 2,
    "k3": lambda lp, ref: torch.exp(ref - lp) - 1 + (lp - ref),
    "low_var_kl": lambda lp, ref: _clamped_k3(lp, ref),
    "abs": lambda lp, ref: torch.where(lp > ref, lp - ref, ref - lp),
    "mse": lambda lp, ref: (lp - ref) ** 2 / 2,
}


def random_logps(seed, shape=(3, 5)):
    """Two float64 tensors of log-probs in (-4, 0)."""
    generator = torch.Generator().manual_seed(seed)
    logp = -4 * torch.rand(shape, generator=generator, dtype=torch.float64)
    ref = -4 * torch.rand(shape, generator=generator, dtype=torch.float64)
    return logp, ref


def test_reference_covers_every_kind():
    assert set(REFERENCE) == set(KL_KINDS)
    assert KL_KINDS == ("k1", "k2", "k3", "low_var_kl", "abs", "mse")


@pytest.mark.parametrize("kind", KL_KINDS)
def test_kind_matches_formula(kind):
    logp, ref = random_logps(0)
    result = kl_estimate(logp, ref, kind)
    assert result.shape == logp.shape and result.dtype == torch.float64
    torch.testing.assert_close(result, REFERENCE[kind](logp, ref), rtol=1e-12, atol=1e-12)


def test_hand_values():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-2.0, -1.0]], dtype=torch.float64)  # Δ = ref − logp = [-1, 1]
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([[1.0, -1.0]], dtype=torch.float64))
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    expected_k3 = torch.tensor([[math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1]], dtype=torch.float64)
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), expected_k3)
    torch.testing.assert_close(kl_estimate(logp, ref, "abs"), torch.tensor([[1.0, 1.0]], dtype=torch.float64))


def test_mse_is_k2():
    logp, ref = random_logps(1)
    assert torch.equal(kl_estimate(logp, ref, "mse"), kl_estimate(logp, ref, "k2"))


def test_k3_is_trl_beta_term_bit_for_bit():
    logp, ref = (t.float() for t in random_logps(2, (4, 7)))
    trl_style = torch.exp(ref - logp) - (ref - logp) - 1
    assert torch.equal(kl_estimate(logp, ref, "k3"), trl_style)


def test_low_var_kl_is_unsloth_clamped_term_bit_for_bit():
    logp, ref = (t.float() for t in random_logps(3, (4, 7)))
    ref = ref.clone()
    ref[0, :3] = torch.tensor([40.0, -40.0, 3.0])  # exercise both clamps
    log_ratio = (ref - logp).clamp(-20, 20)
    unsloth_style = (torch.expm1(log_ratio) - log_ratio).clamp(-10, 10)
    assert torch.equal(kl_estimate(logp, ref, "low_var_kl"), unsloth_style)


def test_low_var_kl_clamps_extreme_inputs():
    # Δ = ref − logp = [50, -50, 3, -5, 0.5]
    logp = torch.zeros(1, 5, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[50.0, -50.0, 3.0, -5.0, 0.5]], dtype=torch.float64)
    value = kl_estimate(logp, ref, "low_var_kl")
    # e^20 − 21 → 10;  e^−20 + 19 → 10;  e^3 − 4 = 16.09 → 10;  e^−5 + 4 = 4.0067 and e^0.5 − 1.5 are unclamped
    expected = torch.tensor([[10.0, 10.0, 10.0, math.exp(-5) + 4, math.exp(0.5) - 1.5]], dtype=torch.float64)
    torch.testing.assert_close(value, expected)
    assert torch.isfinite(kl_estimate(logp, ref, "k3")).all() and kl_estimate(logp, ref, "k3")[0, 0] > 1e20
    value.sum().backward()
    # clamped entries carry no gradient; otherwise d/dlogp (e^Δ − Δ − 1) = 1 − e^Δ
    expected_grad = torch.tensor([[0.0, 0.0, 0.0, 1 - math.exp(-5), 1 - math.exp(0.5)]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected_grad)


@pytest.mark.parametrize("kind, grad_kind", list(itertools.product(KL_KINDS, KL_KINDS)))
def test_straight_through_value_and_gradient(kind, grad_kind):
    logp, ref = random_logps(4)
    logp.requires_grad_(True)
    result = kl_estimate(logp, ref, kind, grad_kind=grad_kind)
    torch.testing.assert_close(result.detach(), REFERENCE[kind](logp.detach(), ref), rtol=1e-12, atol=1e-12)
    weights = torch.linspace(0.5, 2.0, logp.numel(), dtype=torch.float64).view_as(logp)
    (gradient,) = torch.autograd.grad((result * weights).sum(), logp)
    reference_logp = logp.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((REFERENCE[grad_kind](reference_logp, ref) * weights).sum(), reference_logp)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-12)


def test_straight_through_k3_value_k2_gradient_by_hand():
    logp = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.5], dtype=torch.float64)  # Δ = −0.5
    value = kl_estimate(logp, ref, "k3", grad_kind="k2")
    torch.testing.assert_close(value.detach(), torch.tensor([math.exp(-0.5) - 0.5], dtype=torch.float64))
    value.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.5], dtype=torch.float64))  # d/dlogp ½Δ² = −Δ


@settings(max_examples=200, deadline=None)
@given(st.floats(-30, 30, allow_nan=False), st.floats(-30, 30, allow_nan=False))
def test_nonnegative_kinds(logp_value, ref_value):
    logp = torch.tensor([logp_value], dtype=torch.float64)
    ref = torch.tensor([ref_value], dtype=torch.float64)
    # exp(Δ) − Δ − 1 cancels catastrophically near Δ = 0: allow a few ulps of e^Δ
    rounding = 8 * torch.finfo(torch.float64).eps * max(1.0, math.exp(ref_value - logp_value))
    for kind in ("k2", "k3", "low_var_kl", "abs", "mse"):
        assert kl_estimate(logp, ref, kind).item() >= -rounding, kind


def _categorical(seed, size=6):
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(size, generator=generator, dtype=torch.float64, requires_grad=True)
    ref_logits = torch.randn(size, generator=generator, dtype=torch.float64)
    return theta, torch.log_softmax(ref_logits, -1)


@pytest.mark.parametrize("kind, unbiased", [("k1", True), ("k3", True), ("k2", False), ("abs", False)])
def test_exact_expectation_of_value(kind, unbiased):
    """E_{x~π}[k(x)] summed over the whole support: k1 and k3 give KL(π‖π_ref) exactly."""
    theta, ref_logp = _categorical(5)
    logp = torch.log_softmax(theta, -1).detach()
    exact_kl = (logp.exp() * (logp - ref_logp)).sum()
    expectation = (logp.exp() * kl_estimate(logp, ref_logp, kind)).sum()
    if unbiased:
        torch.testing.assert_close(expectation, exact_kl, rtol=1e-12, atol=1e-12)
    else:
        assert abs(expectation - exact_kl) > 1e-3
    if kind == "abs":
        assert expectation > exact_kl  # E|log r| ≥ |E log r|


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_exact_expected_gradient_as_loss(kind):
    """Σ_x π(x)·∇_θ k(x) with x held fixed (the 'kl as loss' gradient), against the documented divergence."""
    theta, ref_logp = _categorical(6)
    logp = torch.log_softmax(theta, -1)
    surrogate = (logp.exp().detach() * kl_estimate(logp, ref_logp, kind)).sum()
    (gradient,) = torch.autograd.grad(surrogate, theta)
    if kind == "k1":
        expected = torch.zeros_like(theta)
    else:
        policy = torch.log_softmax(theta, -1)
        if kind == "k2":
            divergence = (policy.exp() * (policy - ref_logp)).sum()  # reverse KL(π‖π_ref)
        else:
            divergence = (ref_logp.exp() * (ref_logp - policy)).sum()  # forward KL(π_ref‖π)
        (expected,) = torch.autograd.grad(divergence, theta)
    torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-12)
    if kind == "k3":  # and it is not the reverse-KL gradient
        policy = torch.log_softmax(theta, -1)
        (reverse,) = torch.autograd.grad((policy.exp() * (policy - ref_logp)).sum(), theta)
        assert (gradient - reverse).abs().max() > 1e-3


def test_unknown_kind_lists_valid_kinds():
    logp, ref = random_logps(7)
    with pytest.raises(ValueError, match=r"kind='k4'.*k1, k2, k3, low_var_kl, abs, mse"):
        kl_estimate(logp, ref, "k4")
    with pytest.raises(ValueError, match=r"grad_kind='K2'.*k1, k2, k3"):
        kl_estimate(logp, ref, "k3", grad_kind="K2")


def test_shape_mismatch_is_an_error():
    logp, ref = random_logps(8)
    with pytest.raises(ValueError, match=r"same shape.*\(3, 5\).*\(3, 4\)"):
        kl_estimate(logp, ref[:, :4])
    with pytest.raises(ValueError, match="mask"):
        sequence_kl(logp, ref, torch.ones(3, 4))


def test_sequence_kl_sums_masked_tokens_by_hand():
    logp = torch.tensor([[0.0, -1.0, -2.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -1.0, 0.0], [0.0, -3.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    # k1 = logp − ref: row 0 [1, 0, (−2 masked)] → 1; row 1 [−1, 2, 0] → 1
    torch.testing.assert_close(sequence_kl(logp, ref, mask, "k1"), torch.tensor([1.0, 1.0], dtype=torch.float64))
    # k2: row 0 ½(1 + 0) = 0.5; row 1 ½(1 + 4 + 0) = 2.5
    torch.testing.assert_close(sequence_kl(logp, ref, mask, "k2"), torch.tensor([0.5, 2.5], dtype=torch.float64))


@pytest.mark.parametrize("kind", KL_KINDS)
def test_sequence_kl_matches_loop(kind):
    logp, ref = random_logps(9, (4, 6))
    mask = (torch.rand(4, 6, generator=torch.Generator().manual_seed(9)) > 0.3).to(torch.bool)
    per_token = REFERENCE[kind](logp, ref)
    expected = [sum(per_token[b, t].item() for t in range(6) if mask[b, t]) for b in range(4)]
    torch.testing.assert_close(sequence_kl(logp, ref, mask, kind), torch.tensor(expected, dtype=torch.float64))
