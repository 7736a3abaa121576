"""The clipped value loss and explained variance: values and gradients against slow references."""
from __future__ import annotations

import pytest
import torch

from grpo_custom.algorithms.loss_aggregation import token_weights_like_unsloth
from grpo_custom.algorithms.value_loss import explained_variance, value_loss

F64 = torch.float64


def case(seed=0, rows=4, length=6):
    generator = torch.Generator().manual_seed(seed)
    vpreds = torch.randn(rows, length, generator=generator, dtype=F64)
    returns = torch.randn(rows, length, generator=generator, dtype=F64)
    old = vpreds + 0.6 * torch.randn(rows, length, generator=generator, dtype=F64)  # some moves beyond ±c
    mask = (torch.arange(length).unsqueeze(0) < torch.tensor([[6], [3], [1], [5]])).to(F64)
    return vpreds, returns, old, mask


def slow_per_token(vpreds, returns, old, clip):
    """½·max((V − R)², (V_clip − R)²) token by token with Python floats and explicit branches."""
    out, clipped_larger = [], []
    for v_row, r_row, o_row in zip(vpreds, returns, old):
        row, flags = [], []
        for v, r, o in zip(v_row, r_row, o_row):
            moved = v - o
            if clip is not None:
                moved = min(max(moved, -clip), clip)
            unclipped, clipped = (v - r) ** 2, (o + moved - r) ** 2
            row.append(0.5 * max(unclipped, clipped) if clip is not None else 0.5 * unclipped)
            flags.append(clip is not None and clipped > unclipped)
        out.append(row)
        clipped_larger.append(flags)
    return out, clipped_larger


def slow_aggregate(per_token, mask, loss_type, max_length):
    rows = [[x * m for x, m in zip(p, mr)] for p, mr in zip(per_token, mask)]
    counts = [sum(mr) for mr in mask]
    if loss_type == "grpo":
        return sum(sum(r) / max(c, 1) for r, c in zip(rows, counts)) / len(rows)
    if loss_type in ("bnpo", "dapo"):
        return sum(map(sum, rows)) / max(sum(counts), 1)
    if loss_type == "dr_grpo":
        return sum(map(sum, rows)) / (len(rows) * max_length)
    if loss_type == "luspo":
        return sum(map(sum, rows)) / len(rows)
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"])
@pytest.mark.parametrize("clip", [0.2, 0.5, None])
def test_loss_metrics_and_gradient_match_slow_reference(loss_type, clip):
    vpreds, returns, old, mask = case()
    per_token, flags = slow_per_token(vpreds.tolist(), returns.tolist(), old.tolist(), clip)
    expected = slow_aggregate(per_token, mask.tolist(), loss_type, 8)
    v = vpreds.clone().requires_grad_(True)
    loss, metrics = value_loss(v, returns, old, mask, cliprange_value=clip, loss_type=loss_type, max_completion_length=8)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-14)
    scored = [f for row, mr in zip(flags, mask.tolist()) for f, m in zip(row, mr) if m]
    assert metrics["clipfrac"].item() == pytest.approx(sum(scored) / len(scored), abs=1e-12)
    if clip is not None:
        assert 0 < sum(scored) < len(scored)  # the case exercises both branches
    loss.backward()
    # slow gradient: central differences of the slow loss, one token at a time
    step = 1e-6
    for row in range(4):
        for t in range(6):
            shifted = []
            for sign in (1, -1):
                moved = vpreds.clone()
                moved[row, t] += sign * step
                tokens, _ = slow_per_token(moved.tolist(), returns.tolist(), old.tolist(), clip)
                shifted.append(slow_aggregate(tokens, mask.tolist(), loss_type, 8))
            assert v.grad[row, t].item() == pytest.approx((shifted[0] - shifted[1]) / (2 * step), abs=1e-7)


def test_gradient_flows_only_through_unclipped_side_where_it_wins():
    # V moved beyond V_old + c, and the clipped error is larger: the gradient is 0 (the clipped value is constant)
    v = torch.tensor([[1.0]], dtype=F64, requires_grad=True)
    loss, metrics = value_loss(v, torch.tensor([[2.0]], dtype=F64), torch.tensor([[0.0]], dtype=F64),
                               torch.ones(1, 1), cliprange_value=0.5, loss_type="bnpo")
    assert loss.item() == pytest.approx(0.5 * (0.5 - 2.0) ** 2) and metrics["clipfrac"].item() == 1.0
    loss.backward()
    assert v.grad.item() == 0.0
    v = torch.tensor([[1.0]], dtype=F64, requires_grad=True)  # unclipped error larger: dℓ/dV = V − R
    loss, metrics = value_loss(v, torch.tensor([[-1.0]], dtype=F64), torch.tensor([[0.0]], dtype=F64),
                               torch.ones(1, 1), cliprange_value=0.5, loss_type="bnpo")
    loss.backward()
    assert v.grad.item() == pytest.approx(2.0) and metrics["clipfrac"].item() == 0.0


def test_metrics_and_targets_are_detached():
    vpreds, returns, old, mask = case(1)
    returns.requires_grad_(True)
    v = vpreds.clone().requires_grad_(True)
    loss, metrics = value_loss(v, returns, old, mask, cliprange_value=0.2, loss_type="grpo")
    loss.backward()
    assert returns.grad is None and all(not m.requires_grad for m in metrics.values())
    weights = mask / mask.sum()
    assert metrics["vpred_mean"].item() == pytest.approx((vpreds * weights).sum().item())
    assert metrics["returns_mean"].item() == pytest.approx((returns.detach() * weights).sum().item())
    assert metrics["error_mean"].item() == pytest.approx((((vpreds - returns.detach()) ** 2) * weights).sum().item())


def test_token_weights_replace_the_aggregation():
    vpreds, returns, old, mask = case(2)
    loss_kwargs = {"loss_type": "dapo", "num_items_in_batch": torch.tensor(30.0), "num_processes": 2,
                   "current_gradient_accumulation_steps": 2, "steps_per_generation": 4}
    weights = token_weights_like_unsloth(mask, loss_kwargs).to(F64)
    loss, _ = value_loss(vpreds, returns, old, mask, cliprange_value=0.2, loss_type="dapo", token_weights=weights)
    per_token, _ = slow_per_token(vpreds.tolist(), returns.tolist(), old.tolist(), 0.2)
    expected = sum(p * w for row, wr in zip(per_token, weights.tolist()) for p, w in zip(row, wr))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    same, _ = value_loss(vpreds, returns, old, mask, cliprange_value=0.2, loss_type="dapo", num_items_in_batch=30.0,
                         num_processes=2, accumulation_steps=2, steps_per_generation=4)
    assert same.item() == pytest.approx(expected, rel=1e-6)  # both aggregations agree (Unsloth weights are float32)


def test_input_errors():
    v = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="returns has shape"):
        value_loss(v, torch.zeros(2, 4), v, v, cliprange_value=0.2, loss_type="grpo")
    with pytest.raises(ValueError, match="cliprange_value must be a number > 0"):
        value_loss(v, v, v, v, cliprange_value=0.0, loss_type="grpo")
    with pytest.raises(ValueError, match="Unknown loss_type 'ppo'"):
        value_loss(v, v, v, torch.ones(2, 3), cliprange_value=0.2, loss_type="ppo")


def test_explained_variance_values():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    mean = torch.full_like(returns, 3.0)  # the mean of the scored returns: no better than the mean
    assert explained_variance(mean, returns, mask).item() == pytest.approx(0.0, abs=1e-7)
    half = returns * 0.5  # Var(R − V) = Var(R/2) = Var(R)/4 → 0.75
    assert explained_variance(half, returns, mask).item() == pytest.approx(0.75, abs=1e-7)
    assert torch.isnan(explained_variance(returns, returns, torch.zeros(2, 4)))


def test_explained_variance_is_nan_for_constant_returns():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    constant = torch.where(mask.bool(), 2.5, 99.0)  # constant over the scored tokens (not the padding)
    values = torch.tensor([[0.1, -0.4, 2.0, 0.0], [1.0, 0.3, 0.0, 0.0]])
    assert torch.isnan(explained_variance(values, constant, mask))  # not −Var(V)/1e-8 ≈ −7e7
    assert torch.isnan(explained_variance(values, torch.zeros(2, 4), mask))
    # R = A + V in float32 with A = r − V (γ = λ = 1): equal up to round-off (a few ulps of 1), still undefined
    rounded = torch.tensor([[1.0, 1.0000001, 0.9999999, 0.0], [1.0, 1.0000002, 0.0, 0.0]])
    assert 0 < float(rounded[mask.bool()].double().var()) < 1e-13
    assert torch.isnan(explained_variance(values, rounded, mask))
    # a small but real spread of the returns is defined: 1 − Var(R − V)/Var(R) with V = mean(R) → 0
    small = constant + torch.tensor([[1e-3, -1e-3, 0.0, 0.0], [2e-3, 0.0, 0.0, 0.0]])
    assert explained_variance(torch.full((2, 4), float(small[mask.bool()].mean())), small, mask).item() == \
        pytest.approx(0.0, abs=1e-4)
