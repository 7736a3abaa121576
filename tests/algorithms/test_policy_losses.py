"""Policy losses: each built-in against its formula in float64 (value and gradient), gradcheck, the registry.

The references below are written from the formulas (verl's ``core_algos.py`` definitions, the papers),
element by element with Python floats, with hand-derived gradients: independent of the vectorized code.
"""
from __future__ import annotations

import math

import pytest
import torch

from grpo_custom.algorithms.policy_losses import (
    PolicyLossSpec,
    build_policy_loss_spec,
    get_policy_loss,
    list_policy_losses,
    register_policy_loss,
    validate_policy_loss_options,
)
from grpo_custom.algorithms.policy_losses.registry import POLICY_LOSSES
from grpo_custom.algorithms.registry import UnknownNameError

BUILT_INS = ["ppo_clip", "dual_clip", "gspo", "sapo", "gpg", "cispo", "geo_mean", "clip_cov", "kl_cov"]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def clip(x: float, low: float, high: float) -> float:
    return min(max(x, low), high)


def batch(seed: int, B: int = 5, T: int = 7, spread: float = 0.3, token_advantages: bool = False):
    """Random float64 log-probs, old log-probs (ratios around 1, some outside the clip range), advantages
    (some exactly 0) and a mask with a short row and an empty row."""
    generator = torch.Generator().manual_seed(seed)
    log_probs = -torch.rand(B, T, generator=generator, dtype=torch.float64) * 3 - 0.05
    old = log_probs + spread * torch.randn(B, T, generator=generator, dtype=torch.float64)
    if token_advantages:
        advantages = torch.randn(B, T, generator=generator, dtype=torch.float64)
    else:
        advantages = torch.randn(B, 1, generator=generator, dtype=torch.float64).expand(B, T).clone()
        advantages[1] = 0.0
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    mask[3, :] = 0
    return log_probs, old, advantages, mask


def as_lists(*tensors):
    return [t.tolist() for t in tensors]


# ---- element-wise references: (per-token loss, d loss_t / d log_prob_t) or per-sequence forms ----------------


def ref_ppo_clip(lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2, delta=None):
    loss, grad = [], []
    for b in range(len(lp)):
        loss.append([]), grad.append([])
        for t in range(len(lp[b])):
            r, a = math.exp(lp[b][t] - old[b][t]), adv[b][t]
            u = r if delta is None else min(r, delta)
            du = r if delta is None or r < delta else 0.0
            c = clip(r, 1 - epsilon_low, 1 + epsilon_high)
            dc = r if 1 - epsilon_low < r < 1 + epsilon_high else 0.0
            first, second = u * a, c * a
            loss[b].append(-min(first, second))
            if first < second:
                grad[b].append(-a * du)
            elif second < first:
                grad[b].append(-a * dc)
            else:  # a tie: torch.min splits the gradient evenly
                grad[b].append(-a * (du + dc) / 2)
    return loss, grad


def ref_dual_clip(lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2, clip_ratio_c=3.0):
    loss, grad = [], []
    for b in range(len(lp)):
        loss.append([]), grad.append([])
        for t in range(len(lp[b])):
            lr = clip(lp[b][t] - old[b][t], -20, 20)
            r, a = math.exp(lr), adv[b][t]
            c = clip(r, 1 - epsilon_low, 1 + epsilon_high)
            dc = r if 1 - epsilon_low < r < 1 + epsilon_high else 0.0
            first, second = -a * r, -a * c
            value, d = (first, -a * r) if first > second else (second, -a * dc) if second > first else (first, -a * (r + dc) / 2)
            if a < 0 and -a * clip_ratio_c < value:
                value, d = -a * clip_ratio_c, 0.0
            loss[b].append(value), grad[b].append(d)
    return loss, grad


def ref_sapo(lp, old, adv, mask, tau_pos=1.0, tau_neg=1.05):
    loss, grad = [], []
    for b in range(len(lp)):
        loss.append([]), grad.append([])
        for t in range(len(lp[b])):
            r, a = math.exp(clip(lp[b][t] - old[b][t], -20, 20)), adv[b][t]
            tau = tau_pos if a > 0 else tau_neg
            s = sigmoid(tau * (r - 1))
            loss[b].append(-s * 4 / tau * a)
            grad[b].append(-a * 4 * s * (1 - s) * r)
    return loss, grad


def ref_gpg(lp, old, adv, mask):
    return ([[-lp[b][t] * adv[b][t] for t in range(len(lp[b]))] for b in range(len(lp))],
            [[-adv[b][t] for t in range(len(lp[b]))] for b in range(len(lp))])


def ref_cispo(lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2):
    loss, grad = [], []
    for b in range(len(lp)):
        loss.append([]), grad.append([])
        for t in range(len(lp[b])):
            w = clip(math.exp(clip(lp[b][t] - old[b][t], -20, 20)), 1 - epsilon_low, 1 + epsilon_high)
            loss[b].append(-w * adv[b][t] * lp[b][t]), grad[b].append(-w * adv[b][t])
    return loss, grad


def ref_gspo(lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2):
    loss, grad = [], []
    for b in range(len(lp)):
        n = sum(mask[b])
        s = math.exp(min(sum((lp[b][t] - old[b][t]) * mask[b][t] for t in range(len(lp[b]))) / max(n, 1.0), 10.0))
        loss.append([]), grad.append([])
        for t in range(len(lp[b])):
            a = adv[b][t]
            c = clip(s, 1 - epsilon_low, 1 + epsilon_high)
            dc = s if 1 - epsilon_low < s < 1 + epsilon_high else 0.0
            first, second = -a * s, -a * c  # d s_it / d lp_it = s (own token only)
            if first > second:
                loss[b].append(first), grad[b].append(-a * s)
            elif second > first:
                loss[b].append(second), grad[b].append(-a * dc)
            else:
                loss[b].append(first), grad[b].append(-a * (s + dc) / 2)
    return loss, grad


def ref_geo_mean(lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2):
    """Per-sequence loss on every token; grad[b][t] = d L_b / d lp_bt."""
    loss, grad = [], []
    for b in range(len(lp)):
        n = sum(mask[b])
        total, slopes = 0.0, []
        for t in range(len(lp[b])):
            lr, a = lp[b][t] - old[b][t], adv[b][t]
            sign = (a > 0) - (a < 0)
            clipped = clip(lr, -epsilon_low, epsilon_high)
            k = sign * min(sign * lr, sign * clipped)
            inside = -epsilon_low < lr < epsilon_high
            # the min takes the unclipped log-ratio (slope 1) unless clipping moved it pessimistically
            slope = 0.0 if sign == 0 else 1.0 if (inside or sign * lr < sign * clipped) else 0.0
            total += k * mask[b][t]
            slopes.append(slope * mask[b][t] / (n + 1e-8))
        mean_advantage = sum(adv[b][t] * mask[b][t] for t in range(len(lp[b]))) / (n + 1e-8)
        value = -mean_advantage * math.exp(total / (n + 1e-8))
        loss.append([value] * len(lp[b]))
        grad.append([value * slope for slope in slopes])
    return loss, grad


def _covariances(lp, adv, mask):
    cells = [(b, t) for b in range(len(lp)) for t in range(len(lp[b])) if mask[b][t] > 0]
    mean_a = sum(adv[b][t] for b, t in cells) / max(len(cells), 1)
    mean_lp = sum(lp[b][t] for b, t in cells) / max(len(cells), 1)
    return {(b, t): (adv[b][t] - mean_a) * (lp[b][t] - mean_lp) for b, t in cells}


def ref_clip_cov(lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.2, clip_cov_ratio=2e-4, clip_cov_lb=1.0,
                 clip_cov_ub=5.0, seed=0):
    covariance = _covariances(lp, adv, mask)
    loss, grad, clipped_by_ppo = [], [], set()
    for b in range(len(lp)):
        loss.append([]), grad.append([])
        for t in range(len(lp[b])):
            r, a = math.exp(lp[b][t] - old[b][t]), adv[b][t]
            c = clip(r, 1 - epsilon_low, 1 + epsilon_high)
            dc = r if 1 - epsilon_low < r < 1 + epsilon_high else 0.0
            first, second = -a * r, -a * c
            if second > first:
                clipped_by_ppo.add((b, t))
            value, d = (first, -a * r) if first > second else (second, -a * dc) if second > first else (first, -a * (r + dc) / 2)
            loss[b].append(value), grad[b].append(d)
    candidates = sorted(cell for cell, value in covariance.items()
                        if clip_cov_lb < value < clip_cov_ub and cell not in clipped_by_ppo)
    count = max(int(clip_cov_ratio * sum(map(sum, mask))), 1)
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed)).tolist() if candidates else []
    for index in order[:count]:
        b, t = candidates[index]
        loss[b][t], grad[b][t] = 0.0, 0.0
    return loss, grad, {candidates[i] for i in order[:count]}


def ref_kl_cov(lp, old, adv, mask, kl_cov_ratio=2e-4, ppo_kl_coef=0.1):
    covariance = _covariances(lp, adv, mask)
    count = max(1, int(len(covariance) * kl_cov_ratio)) if covariance else 0
    chosen = set(sorted(covariance, key=lambda cell: -covariance[cell])[:count])
    loss, grad = [], []
    for b in range(len(lp)):
        loss.append([]), grad.append([])
        for t in range(len(lp[b])):
            lr, a = lp[b][t] - old[b][t], adv[b][t]
            value, d = -a * math.exp(lr), -a * math.exp(lr)
            if (b, t) in chosen:
                value, d = value + ppo_kl_coef * abs(lr), d + ppo_kl_coef * ((lr > 0) - (lr < 0))
            loss[b].append(value), grad[b].append(d)
    return loss, grad, chosen


REFERENCES = {"ppo_clip": ref_ppo_clip, "dual_clip": ref_dual_clip, "sapo": ref_sapo, "gpg": ref_gpg,
              "cispo": ref_cispo, "gspo": ref_gspo, "geo_mean": ref_geo_mean}
SEQUENCE_LEVEL = {"geo_mean"}
OPTIONS = {  # non-default options, so the tests do not only see the defaults
    "ppo_clip": {"epsilon_low": 0.1, "epsilon_high": 0.28, "delta": 1.3},
    "dual_clip": {"epsilon_low": 0.2, "epsilon_high": 0.2, "clip_ratio_c": 1.5},
    "sapo": {"tau_pos": 0.7, "tau_neg": 1.3},
    "gpg": {},
    "cispo": {"epsilon_low": 0.5, "epsilon_high": 0.1},
    "gspo": {"epsilon_low": 0.03, "epsilon_high": 0.04},
    "geo_mean": {"epsilon_low": 0.1, "epsilon_high": 0.15},
}


def loss_and_grad(name, options, lp, old, adv, mask, weights):
    """Σ w·per_token and its gradient w.r.t. log_probs, through the vectorized implementation."""
    lp = lp.clone().requires_grad_(True)
    per_token, metrics = get_policy_loss(name)(lp, old, adv, mask, **options)
    (per_token * weights).sum().backward()
    return per_token.detach(), lp.grad, metrics


def reference_grad(name, per_token_grad, weights):
    """d Σ_t w_t·L_t / d lp from the reference's per-token (or per-sequence) derivatives."""
    grad = torch.tensor(per_token_grad, dtype=torch.float64)
    if name in SEQUENCE_LEVEL:  # L_b on every token: d/d lp_bs = (Σ_t w_bt)·dL_b/d lp_bs
        return grad * weights.sum(-1, keepdim=True)
    return grad * weights


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("with_options", [False, True], ids=["defaults", "options"])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_builtin_matches_formula_in_float64(name, with_options, seed):
    lp, old, adv, mask = batch(seed, token_advantages=seed % 2 == 1 and name not in ("gspo",))
    options = OPTIONS[name] if with_options else {}
    weights = mask / mask.sum(-1, keepdim=True).clamp(min=1) / mask.shape[0]  # loss_type="grpo"
    per_token, grad, metrics = loss_and_grad(name, options, lp, old, adv, mask, weights)
    want_loss, want_grad = REFERENCES[name](*as_lists(lp, old, adv, mask), **options)
    want_loss = torch.tensor(want_loss, dtype=torch.float64)
    keep = mask.bool() if name not in SEQUENCE_LEVEL else torch.ones_like(mask, dtype=torch.bool)
    torch.testing.assert_close(per_token[keep], want_loss[keep], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, reference_grad(name, want_grad, weights), rtol=1e-10, atol=1e-12)
    assert all(value.dim() == 0 for value in metrics.values())


def test_batches_exercise_clipping():
    """The random batches put ratios on both sides of the clip range (otherwise the checks above prove little)."""
    lp, old, adv, mask = batch(0)
    ratio = torch.exp(lp - old)[mask.bool()]
    assert (ratio > 1.2).any() and (ratio < 0.8).any() and ((ratio > 0.8) & (ratio < 1.2)).any()


@pytest.mark.parametrize("seed", range(3))
def test_clip_cov_matches_formula_and_is_reproducible(seed):
    lp, old, adv, mask = batch(seed, B=6, T=9, token_advantages=True)
    adv = adv * 3  # covariances inside the (1, 5) window
    options = {"clip_cov_ratio": 0.1, "clip_cov_lb": 0.2, "clip_cov_ub": 5.0}
    weights = mask / mask.sum().clamp(min=1)  # loss_type="bnpo"
    per_token, grad, metrics = loss_and_grad("clip_cov", {**options, "generator": torch.Generator().manual_seed(seed)},
                                             lp, old, adv, mask, weights)
    want_loss, want_grad, chosen = ref_clip_cov(*as_lists(lp, old, adv, mask), **options, seed=seed)
    assert len(chosen) == max(int(0.1 * mask.sum()), 1)
    keep = mask.bool()
    torch.testing.assert_close(per_token[keep], torch.tensor(want_loss, dtype=torch.float64)[keep], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, torch.tensor(want_grad, dtype=torch.float64) * weights, rtol=1e-10, atol=1e-12)
    assert float(metrics["clip_frac"]) == pytest.approx(len(chosen) / float(mask.sum()))
    again, _, _ = loss_and_grad("clip_cov", {**options, "generator": torch.Generator().manual_seed(seed)},
                                lp, old, adv, mask, weights)
    assert torch.equal(again, per_token)


@pytest.mark.parametrize("seed", range(3))
def test_kl_cov_matches_formula(seed):
    lp, old, adv, mask = batch(seed, B=6, T=9, token_advantages=True)
    options = {"kl_cov_ratio": 0.15, "ppo_kl_coef": 0.3}
    weights = mask / mask.sum().clamp(min=1)
    per_token, grad, metrics = loss_and_grad("kl_cov", options, lp, old, adv, mask, weights)
    want_loss, want_grad, chosen = ref_kl_cov(*as_lists(lp, old, adv, mask), **options)
    assert len(chosen) == max(1, int(0.15 * mask.sum()))
    keep = mask.bool()
    torch.testing.assert_close(per_token[keep], torch.tensor(want_loss, dtype=torch.float64)[keep], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, torch.tensor(want_grad, dtype=torch.float64) * weights, rtol=1e-10, atol=1e-12)
    assert float(metrics["kl_cov_frac"]) == pytest.approx(len(chosen) / float(mask.sum()))


def test_verl_config_defaults():
    """Defaults are verl's config defaults (ε 0.2/0.2, c 3, τ 1.0/1.05, clip_cov 2e-4 in (1, 5), kl_cov 2e-4, β 0.1)."""
    import inspect

    def defaults(name):
        return {k: p.default for k, p in inspect.signature(get_policy_loss(name)).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}

    assert defaults("ppo_clip") == {"epsilon_low": 0.2, "epsilon_high": 0.2, "delta": None}
    assert defaults("dual_clip") == {"epsilon_low": 0.2, "epsilon_high": 0.2, "clip_ratio_c": 3.0}
    assert defaults("sapo") == {"tau_pos": 1.0, "tau_neg": 1.05}
    assert defaults("clip_cov") == {"epsilon_low": 0.2, "epsilon_high": 0.2, "clip_cov_ratio": 2e-4,
                                    "clip_cov_lb": 1.0, "clip_cov_ub": 5.0, "generator": None}
    assert defaults("kl_cov") == {"kl_cov_ratio": 2e-4, "ppo_kl_coef": 0.1}


# gspo and cispo hold part of their value under a stop-gradient by design (their gradient is not the
# derivative of their value); their gradients are checked against the formula above instead.
@pytest.mark.parametrize("name", [name for name in BUILT_INS if name not in ("gspo", "cispo")])
def test_gradcheck(name):
    lp, old, adv, mask = batch(7, B=4, T=5, spread=0.15, token_advantages=True)
    adv = adv * 3
    options = {"clip_cov_ratio": 0.2, "clip_cov_lb": 0.1} if name == "clip_cov" else {}

    def total(log_probs):
        extra = {"generator": torch.Generator().manual_seed(0)} if name == "clip_cov" else {}
        per_token, _ = get_policy_loss(name)(log_probs, old, adv, mask, **options, **extra)
        return (per_token * mask).sum()

    assert torch.autograd.gradcheck(total, (lp.clone().requires_grad_(True),), eps=1e-7, atol=1e-6)


def test_ppo_clip_equals_trl_formula_bitwise():
    """ppo_clip is TRL 1.15's token-level computation op for op (float32, as in training)."""
    lp, old, adv, mask = (t.float() for t in batch(1))
    for delta in (None, 1.4):
        coef_1 = torch.exp(lp - old)
        coef_2 = torch.clamp(coef_1, 1 - 0.2, 1 + 0.28)
        if delta is not None:
            coef_1 = torch.clamp(coef_1, max=delta)
        trl = -torch.min(coef_1 * adv, coef_2 * adv)
        ours, _ = get_policy_loss("ppo_clip")(lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28, delta=delta)
        assert torch.equal(ours, trl)


def test_scheduled_options_enter_as_tensors_and_match_constants():
    lp, old, adv, mask = batch(2)
    schedule = lambda step: 0.1 + 0.05 * step  # noqa: E731
    spec = build_policy_loss_spec("ppo_clip", None, {"epsilon_low": schedule, "epsilon_high": 0.3, "delta": None})
    assert not spec.stock and spec.scheduled == ["epsilon_low"]
    resolved = spec.options_at(2)
    assert isinstance(resolved["epsilon_low"], torch.Tensor) and resolved["epsilon_low"].dim() == 0
    assert float(resolved["epsilon_low"]) == pytest.approx(0.2)
    got, _ = spec(lp, old, adv, mask, step=2)
    want, _ = get_policy_loss("ppo_clip")(lp, old, adv, mask, epsilon_low=float(torch.tensor(0.2, dtype=torch.float32)),
                                          epsilon_high=0.3)
    torch.testing.assert_close(got, want)
    bad = build_policy_loss_spec("ppo_clip", None, {"epsilon_low": lambda step: -1.0})
    with pytest.raises(ValueError, match="epsilon_low.*schedule at step 3"):
        bad.options_at(3)


def test_build_spec_stock_and_trust_region_defaults():
    assert build_policy_loss_spec("ppo_clip", None, {"epsilon_low": 0.2, "epsilon_high": 0.2, "delta": None}).stock
    assert not build_policy_loss_spec("ppo_clip", {"delta": 2.0}, {"epsilon_low": 0.2}).stock
    spec = build_policy_loss_spec("sapo", {"tau_neg": 2.0}, {"epsilon_low": 0.1, "epsilon_high": 0.3, "delta": None})
    assert spec.options == {"tau_neg": 2.0}  # sapo takes no epsilon
    spec = build_policy_loss_spec("gspo", {"epsilon_high": 4e-4}, {"epsilon_low": 3e-4, "epsilon_high": 0.2})
    assert spec.options == {"epsilon_low": 3e-4, "epsilon_high": 4e-4}  # options override the config


def test_registry_rules():
    assert list_policy_losses()[:len(BUILT_INS)] == BUILT_INS
    with pytest.raises(UnknownNameError, match="Registered policy-loss functions: ppo_clip, dual_clip"):
        get_policy_loss("ppo")
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("gspo")(lambda log_probs, old_log_probs, advantages, mask: None)

    @register_policy_loss("test_only_reinforce")
    def reinforce(log_probs, old_log_probs, advantages, mask, *, scale=1.0):
        return -scale * advantages * log_probs, {}

    try:
        validate_policy_loss_options("test_only_reinforce", {"scale": 2.0})
        with pytest.raises(ValueError, match="Unknown option 'epsilon' .*Accepted options: scale"):
            validate_policy_loss_options("test_only_reinforce", {"epsilon": 0.1})
    finally:
        POLICY_LOSSES.unregister("test_only_reinforce")


@pytest.mark.parametrize("options, error, match", [
    ({"clip_ratio_c": 1.0}, ValueError, "clip_ratio_c.*> 1"),
    ({"epsilon_low": -0.1}, ValueError, "epsilon_low.*≥ 0"),
    ({"epsilon_high": float("nan")}, ValueError, "epsilon_high"),
    ({"cliprange": 0.2}, ValueError, "Unknown option 'cliprange'.*epsilon_low, epsilon_high, clip_ratio_c"),
    ({"mask": 1}, ValueError, "data the trainer supplies"),
])
def test_options_validated_at_config_time(options, error, match):
    with pytest.raises(error, match=match):
        validate_policy_loss_options("dual_clip", options)


def test_option_rules_for_other_losses():
    with pytest.raises(ValueError, match="tau_neg"):
        validate_policy_loss_options("sapo", {"tau_neg": 0.0})
    with pytest.raises(ValueError, match="clip_cov_ratio"):
        validate_policy_loss_options("clip_cov", {"clip_cov_ratio": 0.0})
    with pytest.raises(TypeError, match="generator"):
        validate_policy_loss_options("clip_cov", {"generator": 0})
    with pytest.raises(ValueError, match="kl_cov_ratio"):
        validate_policy_loss_options("kl_cov", {"kl_cov_ratio": 2.0})
    validate_policy_loss_options("dual_clip", {"clip_ratio_c": lambda step: 3.0})  # schedules checked per step


def test_callable_with_the_contract_is_accepted_and_bad_ones_are_not():
    def custom(log_probs, old_log_probs, advantages, mask, *, beta=0.5):
        return -beta * advantages * log_probs, {"beta": torch.tensor(beta)}

    validate_policy_loss_options(custom, {"beta": 0.1})
    spec = build_policy_loss_spec(custom, {"beta": 0.1}, {"epsilon_low": 0.2})
    assert spec.label.endswith("custom") and spec.options == {"beta": 0.1}
    lp, old, adv, mask = batch(0)
    per_token, metrics = spec(lp, old, adv, mask)
    torch.testing.assert_close(per_token, -0.1 * adv * lp)
    with pytest.raises(TypeError, match="does not follow the contract"):
        validate_policy_loss_options(lambda log_probs: None, {})
    wrong = PolicyLossSpec(label="wrong", function=lambda lp, old, adv, mask: (lp.sum(-1), {}))
    with pytest.raises(ValueError, match="shape"):
        wrong(lp, old, adv, mask)


def test_gspo_equals_sequence_objective_under_grpo_aggregation():
    """With a sequence advantage, loss_type="grpo" of GSPO-token gives the paper's sequence objective and gradient."""
    lp, old, adv, mask = batch(3, spread=0.02)
    weights = mask / mask.sum(-1, keepdim=True).clamp(min=1) / mask.shape[0]
    lp_leaf = lp.clone().requires_grad_(True)
    per_token, _ = get_policy_loss("gspo")(lp_leaf, old, adv, mask, epsilon_low=0.5, epsilon_high=0.5)
    (per_token * weights).sum().backward()
    lp_seq = lp.clone().requires_grad_(True)
    s = torch.exp(((lp_seq - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1))  # [B] unclipped in this range
    (-(adv[:, 0] * s) * (mask.sum(-1) > 0)).sum().div(mask.shape[0]).backward()
    torch.testing.assert_close(lp_leaf.grad, lp_seq.grad, rtol=1e-10, atol=1e-12)
