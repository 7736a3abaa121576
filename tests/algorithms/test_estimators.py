"""Tests of grpo_custom.algorithms.estimators: registry, hand-computed values, loop references, TRL parity, properties."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trl.trainer.utils import nanstd

from grpo_custom.algorithms.estimators import (
    ADVANTAGE_ESTIMATORS,
    get_advantage_estimator,
    list_advantage_estimators,
    register_advantage_estimator,
    validate_estimator_options,
)
from grpo_custom.algorithms.registry import UnknownNameError

BUILTINS = ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "opo", "grpo_passk", "gdpo"]
NEEDS_TWO_SAMPLES = ["grpo", "rloo", "grpo_passk", "gdpo"]
NAN = float("nan")
EPS = 1e-4


def common_inputs(rewards: torch.Tensor, max_length: int = 6) -> dict:
    """Every common input, consistent with ``rewards`` ([N] with NaN = unscorable).

    Lengths cycle through 1..max_length, the mask is right-padded, and gdpo sees a single reward
    function of weight 1 whose values are ``rewards``.
    """
    n = rewards.numel()
    lengths = torch.arange(n) % max_length + 1  # [N]
    mask = (torch.arange(max_length).unsqueeze(0) < lengths.unsqueeze(1)).to(rewards.dtype)  # [N, T]
    return dict(
        completion_lengths=lengths,
        completion_mask=mask,
        rewards_per_func=rewards.unsqueeze(1),
        reward_weights=torch.ones(1, dtype=rewards.dtype),
    )


def call(name: str, rewards: torch.Tensor, num_generations: int, **options) -> torch.Tensor:
    """Run a registered estimator with every common input filled in from ``rewards``."""
    return get_advantage_estimator(name)(rewards, num_generations, **common_inputs(rewards), **options)


# ---------------------------------------------------------------------------------------------
# Independent loop references (plain Python floats)
# ---------------------------------------------------------------------------------------------


def _valid(values):
    return [v for v in values if not math.isnan(v)]


def _mean(values):
    return sum(values) / len(values) if values else NAN


def _std(values):
    """Bessel-corrected; NaN for fewer than two values (as TRL's nanstd)."""
    if len(values) < 2:
        return NAN
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _groups(rewards, g):
    return [rewards[start : start + g] for start in range(0, len(rewards), g)]


def _zero_nan(values):
    return [0.0 if math.isnan(v) else v for v in values]


def _whiten_list(values, eps=EPS):
    valid = _valid(values)
    m, s = _mean(valid), _std(valid)
    return [(v - m) / (s + eps) for v in values]


def ref_grpo(rewards, g, scale="group", eps=EPS):
    out = []
    batch_std = _std(_valid(rewards))
    for group in _groups(rewards, g):
        m = _mean(_valid(group))
        s = {"group": _std(_valid(group)), "batch": batch_std, "none": None}[scale]
        out += [(r - m) if s is None else (r - m) / (s + eps) for r in group]
    return _zero_nan(out)


def ref_dr_grpo(rewards, g):
    return _zero_nan([r - _mean(_valid(group)) for group in _groups(rewards, g) for r in group])


def ref_rloo(rewards, g):
    out = []
    for group in _groups(rewards, g):
        for i, r in enumerate(group):
            others = _valid(group[:i] + group[i + 1 :])
            out.append(r - _mean(others) if others else NAN)
    return _zero_nan(out)


def ref_reinforce_pp(rewards):
    return _zero_nan(_whiten_list(rewards))


def ref_reinforce_pp_tokens(rewards, mask, gamma, eps=EPS):
    returns = []
    for r, row in zip(rewards, mask):
        valid_positions = [t for t, m in enumerate(row) if m]
        end = valid_positions[-1] + 1 if valid_positions else 0
        returns.append([gamma ** (end - 1 - t) * r if m else None for t, m in enumerate(row)])
    flat = [x for row in returns for x in row if x is not None and not math.isnan(x)]
    m, s = _mean(flat), _std(flat)
    return [[0.0 if x is None or math.isnan(x) else (x - m) / (s + eps) for x in row] for row in returns]


def ref_reinforce_pp_baseline(rewards, g):
    centered = [r - _mean(_valid(group)) for group in _groups(rewards, g) for r in group]
    return _zero_nan(_whiten_list(centered))


def ref_opo(rewards, g, lengths):
    out = []
    for group, group_lengths in zip(_groups(rewards, g), _groups(lengths, g)):
        pairs = [(r, n) for r, n in zip(group, group_lengths) if not math.isnan(r)]
        total = sum(n for _, n in pairs)
        baseline = sum(r * n for r, n in pairs) / total if total else NAN
        out += [r - baseline for r in group]
    return _zero_nan(out)


def ref_grpo_passk(rewards, g, eps=EPS):
    out = []
    for group in _groups(rewards, g):
        advantages = [0.0] * g
        valid_indices = [i for i, r in enumerate(group) if not math.isnan(r)]
        if len(valid_indices) >= 2:
            best = valid_indices[0]
            for i in valid_indices:
                if group[i] > group[best]:
                    best = i
            runner_up = max(group[i] for i in valid_indices if i != best)
            advantages[best] = (group[best] - runner_up) / (_std(_valid(group)) + eps)
        out += advantages
    return out


def ref_gdpo(per_func, weights, g, eps=EPS):
    n, f = len(per_func), len(weights)
    z = [[NAN] * f for _ in range(n)]
    for k in range(f):
        for start in range(0, n, g):
            column = [per_func[i][k] for i in range(start, start + g)]
            m, s = _mean(_valid(column)), _std(_valid(column))
            for i in range(start, start + g):
                z[i][k] = (per_func[i][k] - m) / (s + eps)
    summed = []
    for i in range(n):
        if all(math.isnan(v) for v in per_func[i]):
            summed.append(NAN)
        else:
            summed.append(sum(w * zk for w, zk in zip(weights, z[i]) if not math.isnan(zk)))
    return _zero_nan(_whiten_list(summed, eps))


def assert_close_list(actual: torch.Tensor, expected, atol=1e-9, rtol=1e-6):
    """Compare with a Python list. rtol 1e-6 even in float64: TRL's nanstd computes its Bessel factor
    count / (count − 1) in the default dtype (float32), e.g. 6/5 carries a 2e-8 relative error."""
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------------
# Registry and option validation
# ---------------------------------------------------------------------------------------------


def test_list_contains_all_builtins_in_order():
    assert list_advantage_estimators()[: len(BUILTINS)] == BUILTINS


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        register_advantage_estimator("grpo")(lambda rewards, num_generations: rewards)


def test_user_estimator_registers_and_resolves():
    @register_advantage_estimator("test_sign")
    def sign_advantages(rewards, num_generations, **common):
        """A_i = sign(r_i)."""
        return torch.sign(rewards)

    try:
        assert get_advantage_estimator("test_sign") is sign_advantages
        assert "test_sign" in list_advantage_estimators()
        validate_estimator_options("test_sign", {"anything": 1})  # **common accepts every option
    finally:
        ADVANTAGE_ESTIMATORS.unregister("test_sign")
    assert "test_sign" not in list_advantage_estimators()


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as error:
        get_advantage_estimator("grpoo")
    message = str(error.value)
    assert "'grpoo'" in message
    for name in BUILTINS:
        assert name in message


@pytest.mark.parametrize(
    "name, options",
    [
        ("grpo", {}),
        ("grpo", {"scale_rewards": "batch"}),
        ("grpo", {"scale_rewards": False, "epsilon": 1e-6}),
        ("reinforce_pp", {"gamma": 0.99}),
        ("gdpo", {}),
    ],
)
def test_validate_options_accepts_good_options(name, options):
    validate_estimator_options(name, options)


def test_validate_options_rejects_misspelled_option():
    with pytest.raises(ValueError) as error:
        validate_estimator_options("grpo", {"scale_reward": "group"})
    message = str(error.value)
    assert "'scale_reward'" in message and "'grpo'" in message and "scale_rewards" in message


def test_validate_options_rejects_option_of_another_estimator():
    with pytest.raises(ValueError, match=r"Unknown option 'gamma' for advantage estimator 'rloo'.*\(none\)"):
        validate_estimator_options("rloo", {"gamma": 0.9})


def test_validate_options_rejects_trainer_inputs_as_options():
    with pytest.raises(ValueError, match="completion_mask"):
        validate_estimator_options("grpo", {"completion_mask": None})


def test_validate_options_for_callables():
    def scaled(rewards, num_generations, *, completion_lengths=None, completion_mask=None,
               rewards_per_func=None, reward_weights=None, epsilon=1e-4, scale=1.0):
        """A_i = scale · r_i."""
        return scale * rewards

    def missing_common_inputs(rewards, num_generations):
        """A_i = r_i."""
        return rewards

    validate_estimator_options(scaled, {"scale": 2.0})
    with pytest.raises(ValueError, match="'scal'.*scaled'.*Accepted options: scale"):
        validate_estimator_options(scaled, {"scal": 2.0})
    with pytest.raises(TypeError, match="does not follow the contract"):
        validate_estimator_options(missing_common_inputs, {})
    with pytest.raises(UnknownNameError):
        validate_estimator_options("not_registered", {})
    with pytest.raises(TypeError, match="dict with str keys"):
        validate_estimator_options("grpo", [("scale_rewards", "group")])


@pytest.mark.parametrize("name", BUILTINS)
def test_builtins_declare_no_catch_all(name):
    kinds = [p.kind for p in inspect.signature(get_advantage_estimator(name)).parameters.values()]
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    assert get_advantage_estimator(name).__doc__


# ---------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------

# Two groups of three: [1, 2, 4] (mean 7/3, Bessel std sqrt(7/3)) and [0, 0, 3] (mean 1, std sqrt(3)).
HAND_REWARDS = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.0, 3.0], dtype=torch.float64)
S1, S2 = math.sqrt(7 / 3), math.sqrt(3.0)


def test_grpo_hand_values():
    expected = [c / (S1 + EPS) for c in (-4 / 3, -1 / 3, 5 / 3)] + [c / (S2 + EPS) for c in (-1.0, -1.0, 2.0)]
    assert_close_list(call("grpo", HAND_REWARDS, 3), expected)
    # batch std of [1, 2, 4, 0, 0, 3]: mean 5/3, Σ(r − 5/3)² = (4 + 1 + 49 + 25 + 25 + 16)/9, / (6 − 1)
    batch_std = math.sqrt((4 / 9 + 1 / 9 + 49 / 9 + 25 / 9 + 25 / 9 + 16 / 9) / 5)
    centered = [-4 / 3, -1 / 3, 5 / 3, -1.0, -1.0, 2.0]
    assert_close_list(call("grpo", HAND_REWARDS, 3, scale_rewards="batch"), [c / (batch_std + EPS) for c in centered])
    assert_close_list(call("grpo", HAND_REWARDS, 3, scale_rewards="none"), centered)
    assert_close_list(call("grpo", HAND_REWARDS, 3, scale_rewards=False), centered)
    assert torch.equal(call("grpo", HAND_REWARDS, 3, scale_rewards=True), call("grpo", HAND_REWARDS, 3))


def test_dr_grpo_hand_values():
    assert_close_list(call("dr_grpo", HAND_REWARDS, 3), [-4 / 3, -1 / 3, 5 / 3, -1.0, -1.0, 2.0])


def test_rloo_hand_values():
    # r_i − mean of the other two: 1 − 3, 2 − 2.5, 4 − 1.5, 0 − 1.5, 0 − 1.5, 3 − 0
    assert_close_list(call("rloo", HAND_REWARDS, 3), [-2.0, -0.5, 2.5, -1.5, -1.5, 3.0])


def test_rloo_with_unscorable_member_uses_valid_count():
    rewards = torch.tensor([1.0, NAN, 3.0, 5.0], dtype=torch.float64)
    # valid members [1, 3, 5]: 1 − 4, 3 − 3, 5 − 2; the NaN completion gets 0
    assert_close_list(call("rloo", rewards, 4), [-3.0, 0.0, 0.0, 3.0])


def test_reinforce_pp_hand_values():
    # whole-batch mean 5/3 and Bessel std over all six rewards
    batch_std = math.sqrt((4 / 9 + 1 / 9 + 49 / 9 + 25 / 9 + 25 / 9 + 16 / 9) / 5)
    expected = [(r - 5 / 3) / (batch_std + EPS) for r in [1.0, 2.0, 4.0, 0.0, 0.0, 3.0]]
    assert_close_list(call("reinforce_pp", HAND_REWARDS, 3), expected)


def test_reinforce_pp_baseline_hand_values():
    centered = [-4 / 3, -1 / 3, 5 / 3, -1.0, -1.0, 2.0]  # batch mean 0
    std = math.sqrt(sum(c * c for c in centered) / 5)
    assert_close_list(call("reinforce_pp_baseline", HAND_REWARDS, 3), [c / (std + EPS) for c in centered])


def test_opo_hand_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    lengths = torch.tensor([3, 1, 2, 6])
    # group 1: baseline (3·1 + 1·0)/4 = 0.75; group 2: (2·0 + 6·1)/8 = 0.75
    advantages = get_advantage_estimator("opo")(rewards, 2, completion_lengths=lengths)
    assert_close_list(advantages, [0.25, -0.75, -0.75, 0.25])


def test_opo_zero_length_group_gets_zero():
    rewards = torch.tensor([1.0, 0.0, 2.0, 5.0])
    advantages = get_advantage_estimator("opo")(rewards, 2, completion_lengths=torch.tensor([0, 0, 1, 1]))
    assert_close_list(advantages, [0.0, 0.0, -1.5, 1.5])


def test_grpo_passk_hand_values():
    advantages = call("grpo_passk", HAND_REWARDS, 3)
    assert_close_list(advantages, [0.0, 0.0, 2 / (S1 + EPS), 0.0, 0.0, 3 / (S2 + EPS)])


def test_grpo_passk_tie_goes_to_first_max_with_zero_gap():
    rewards = torch.tensor([1.0, 3.0, 3.0, 0.0, NAN, 2.0, 2.0, 1.0], dtype=torch.float64)
    advantages = call("grpo_passk", rewards, 4)
    assert torch.equal(advantages, torch.zeros(8, dtype=torch.float64))
    rewards = torch.tensor([NAN, 0.0, 5.0, 1.0], dtype=torch.float64)  # NaN never ranks as best
    std = math.sqrt(((0 - 2) ** 2 + (5 - 2) ** 2 + (1 - 2) ** 2) / 2)
    assert_close_list(call("grpo_passk", rewards, 4), [0.0, 0.0, 4 / (std + EPS), 0.0])


def test_gdpo_hand_values():
    # two functions, G = 2, weights (1, 2); function 2 did not score completion 3.
    per_func = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0], [4.0, NAN]], dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0], dtype=torch.float64)
    # two values a < b have mean (a + b)/2, Bessel std (b − a)/√2, z-scores ∓((b − a)/2)/((b − a)/√2 + ε)
    z1 = 0.5 / (math.sqrt(0.5) + EPS)  # group 1, both functions: b − a = 1
    z2 = 1.0 / (math.sqrt(2.0) + EPS)  # group 2, function 1: b − a = 2
    summed = [z1 - 2 * z1, -z1 + 2 * z1, -z2, z2]  # function 2 of group 2 has one value: std NaN → skipped
    mean = sum(summed) / 4
    std = math.sqrt(sum((s - mean) ** 2 for s in summed) / 3)
    expected = [(s - mean) / (std + EPS) for s in summed]
    advantages = get_advantage_estimator("gdpo")(
        torch.zeros(4, dtype=torch.float64), 2, rewards_per_func=per_func, reward_weights=weights
    )
    assert_close_list(advantages, expected)
    assert_close_list(advantages, ref_gdpo(per_func.tolist(), weights.tolist(), 2))


def test_reinforce_pp_token_level_hand_values():
    rewards = torch.tensor([1.0, 2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    advantages = get_advantage_estimator("reinforce_pp")(rewards, 2, completion_mask=mask, gamma=0.5)
    returns = [0.25, 0.5, 1.0, 1.0, 2.0]  # γ^(L−1−t)·r on the valid tokens
    mean = sum(returns) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in returns) / 4)
    w = [(x - mean) / (std + EPS) for x in returns]
    assert_close_list(advantages, [[w[0], w[1], w[2], 0.0], [w[3], w[4], 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# Loop references on random inputs with unscorable completions
# ---------------------------------------------------------------------------------------------


def random_rewards(num_prompts: int, g: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(num_prompts * g, generator=generator, dtype=dtype)
    rewards[torch.rand(num_prompts * g, generator=generator) < 0.2] = NAN
    rewards[:g] = NAN  # one fully unscorable group
    rewards[g : g + 1] = 0.5  # one group with a single scorable member
    rewards[g + 1 : 2 * g] = NAN
    rewards[2 * g : 3 * g] = 1.0  # one constant group
    return rewards


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_builtins_match_loop_references(seed):
    g = 4
    rewards = random_rewards(8, g, seed)
    values = rewards.tolist()
    lengths = common_inputs(rewards)["completion_lengths"].tolist()
    references = {
        "grpo": ref_grpo(values, g),
        "dr_grpo": ref_dr_grpo(values, g),
        "rloo": ref_rloo(values, g),
        "reinforce_pp": ref_reinforce_pp(values),
        "reinforce_pp_baseline": ref_reinforce_pp_baseline(values, g),
        "opo": ref_opo(values, g, lengths),
        "grpo_passk": ref_grpo_passk(values, g),
        "gdpo": ref_gdpo([[v] for v in values], [1.0], g),
    }
    assert sorted(references) == sorted(BUILTINS)
    for name, expected in references.items():
        assert_close_list(call(name, rewards, g), expected)
    for scale in ("batch", "none"):
        assert_close_list(call("grpo", rewards, g, scale_rewards=scale), ref_grpo(values, g, scale))
    mask = common_inputs(rewards)["completion_mask"]
    assert_close_list(call("reinforce_pp", rewards, g, gamma=0.9), ref_reinforce_pp_tokens(values, mask.tolist(), 0.9))


def test_gdpo_matches_loop_reference_with_several_functions():
    generator = torch.Generator().manual_seed(5)
    per_func = torch.randn(24, 3, generator=generator, dtype=torch.float64)
    per_func[torch.rand(24, 3, generator=generator) < 0.3] = NAN
    per_func[7] = NAN  # unscorable completion
    weights = torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64)
    advantages = get_advantage_estimator("gdpo")(
        torch.zeros(24, dtype=torch.float64), 4, rewards_per_func=per_func, reward_weights=weights
    )
    assert_close_list(advantages, ref_gdpo(per_func.tolist(), weights.tolist(), 4))
    assert advantages[7] == 0.0


# ---------------------------------------------------------------------------------------------
# Bitwise parity with TRL 1.15's inline arithmetic
# ---------------------------------------------------------------------------------------------


def trl_sum_then_normalize(rewards: torch.Tensor, g: int, scale: str) -> torch.Tensor:
    """TRL's order of operations: group mean repeated per completion, std per group or batch, + 1e-4."""
    group_view = rewards.view(-1, g)
    mean = torch.nanmean(group_view, dim=1).repeat_interleave(g, dim=0)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = nanstd(group_view, dim=1).repeat_interleave(g, dim=0)
    out = rewards - mean
    if scale != "none":
        out = out / (std + 1e-4)
    return torch.nan_to_num(out, nan=0.0)


def trl_normalize_then_sum(per_func: torch.Tensor, weights: torch.Tensor, g: int) -> torch.Tensor:
    """TRL's GDPO branch: per-function group z-scores, weighted nansum, unscorable → NaN, batch z-score."""
    f = per_func.shape[1]
    blocks = per_func.view(-1, g, f)
    normalized = (blocks - torch.nanmean(blocks, dim=1, keepdim=True)) / (nanstd(blocks, dim=1, keepdim=True) + 1e-4)
    total = (normalized.view(-1, f) * weights.unsqueeze(0)).nansum(dim=1)
    total[torch.isnan(per_func).all(dim=1)] = torch.nan
    out = (total - torch.nanmean(total)) / (nanstd(total).expand_as(total) + 1e-4)
    return torch.nan_to_num(out, nan=0.0)


def trl_style_batch(seed: int, g: int, dtype: torch.dtype):
    """Per-function rewards with Nones (NaN) summed as TRL sums them, unscorable rows set to NaN."""
    generator = torch.Generator().manual_seed(seed)
    per_func = (torch.rand(16 * g, 3, generator=generator) * 4).round().to(dtype) + torch.randn(
        16 * g, 3, generator=generator, dtype=dtype
    ) * 0.1
    per_func[torch.rand(16 * g, 3, generator=generator) < 0.25] = NAN
    per_func[:g] = NAN
    per_func[g : 2 * g] = 2.0  # zero-variance group
    weights = torch.tensor([1.0, 0.5, 2.0])  # float32, as TRL stores reward_weights
    rewards = (per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(per_func).all(dim=1)] = NAN
    return rewards, per_func, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("g", [2, 8])
def test_grpo_bitwise_equal_to_trl_arithmetic(scale, g, dtype):
    for seed in range(3):
        rewards, _, _ = trl_style_batch(seed, g, dtype)
        advantages = get_advantage_estimator("grpo")(rewards, g, scale_rewards=scale)
        assert advantages.dtype == dtype
        assert torch.equal(advantages, trl_sum_then_normalize(rewards, g, scale))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("g", [2, 8])
def test_gdpo_bitwise_equal_to_trl_arithmetic(g, dtype):
    for seed in range(3):
        rewards, per_func, weights = trl_style_batch(seed, g, dtype)
        advantages = get_advantage_estimator("gdpo")(rewards, g, rewards_per_func=per_func, reward_weights=weights)
        assert torch.equal(advantages, trl_normalize_then_sum(per_func, weights, g))


# ---------------------------------------------------------------------------------------------
# Token-level REINFORCE++
# ---------------------------------------------------------------------------------------------


def test_reinforce_pp_token_level_structure():
    rewards = torch.tensor([1.0, -2.0, NAN, 3.0, 0.5, 2.0], dtype=torch.float64)
    mask = torch.tensor(
        [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    )
    gamma = 0.8
    advantages = get_advantage_estimator("reinforce_pp")(rewards, 3, completion_mask=mask, gamma=gamma)
    assert advantages.shape == (6, 5) and advantages.dtype == torch.float64
    assert torch.all(advantages[mask == 0] == 0)
    assert torch.all(advantages[2] == 0)  # unscorable completion
    # Whitening is one affine map a·R + b (a > 0) of the return-to-go R = γ^(L−1−t)·r on valid tokens.
    scored = mask.bool() & ~torch.isnan(rewards).unsqueeze(1)
    lengths = mask.sum(dim=1, keepdim=True)
    returns = gamma ** (lengths - 1 - torch.arange(5)).clamp(min=0).double() * rewards.unsqueeze(1)
    design = torch.stack([returns[scored], torch.ones(int(scored.sum()), dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, advantages[scored].unsqueeze(1)).solution.squeeze(1)
    assert solution[0] > 0
    torch.testing.assert_close(design @ solution, advantages[scored], atol=1e-10, rtol=0)
    # the last valid token carries the undiscounted reward: rows 0 and 3 have r = 1 and 3
    assert advantages[0, 3] == pytest.approx(solution[0].item() * 1.0 + solution[1].item())
    assert advantages[3, 4] == pytest.approx(solution[0].item() * 3.0 + solution[1].item())


def test_reinforce_pp_gamma_one_is_sequence_level_and_ignores_mask():
    rewards = random_rewards(4, 4, seed=3)
    sequence = get_advantage_estimator("reinforce_pp")(rewards, 4, completion_mask=None)
    assert sequence.shape == (16,)
    assert torch.equal(sequence, call("reinforce_pp", rewards, 4, gamma=1.0))


@pytest.mark.parametrize("gamma", [-0.1, 1.5, True, "0.9"])
def test_reinforce_pp_rejects_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma"):
        call("reinforce_pp", HAND_REWARDS, 3, gamma=gamma)


def test_reinforce_pp_token_level_input_errors():
    estimator = get_advantage_estimator("reinforce_pp")
    with pytest.raises(ValueError, match="'reinforce_pp' needs completion_mask"):
        estimator(HAND_REWARDS, 3, gamma=0.9)
    with pytest.raises(ValueError, match="completion_mask must have shape"):
        estimator(HAND_REWARDS, 3, gamma=0.9, completion_mask=torch.ones(5, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        estimator(HAND_REWARDS, 3, gamma=0.9, completion_mask=torch.full((6, 4), 0.5))


# ---------------------------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEEDS_TWO_SAMPLES)
def test_single_generation_rejected(name):
    with pytest.raises(ValueError, match=rf"'{name}' needs at least 2 completions per group"):
        call(name, HAND_REWARDS, 1)


@pytest.mark.parametrize("name", ["dr_grpo", "reinforce_pp", "reinforce_pp_baseline", "opo"])
def test_single_generation_allowed_where_defined(name):
    advantages = call(name, HAND_REWARDS, 1)
    assert advantages.shape == (6,) and torch.isfinite(advantages).all()


def test_grpo_single_generation_allowed_without_group_scaling():
    assert torch.equal(call("grpo", HAND_REWARDS, 1, scale_rewards="none"), torch.zeros(6, dtype=torch.float64))
    assert torch.equal(call("grpo", HAND_REWARDS, 1, scale_rewards="batch"), torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("name", BUILTINS)
def test_indivisible_batch_rejected(name):
    with pytest.raises(ValueError, match=rf"'{name}'.*N=6 is not divisible by num_generations=4"):
        call(name, HAND_REWARDS, 4)


@pytest.mark.parametrize("name", BUILTINS)
def test_bad_rewards_and_num_generations_rejected(name):
    with pytest.raises(TypeError, match="rewards must be a 1-D float tensor"):
        call(name, torch.tensor([1, 2, 3, 4]), 2)
    with pytest.raises(TypeError, match="rewards must be a 1-D float tensor"):
        get_advantage_estimator(name)(HAND_REWARDS.view(2, 3), 3)
    with pytest.raises(ValueError, match="num_generations must be an int >= 1"):
        call(name, HAND_REWARDS, 0)


def test_missing_or_malformed_inputs_rejected():
    with pytest.raises(ValueError, match="'opo' needs completion_lengths, but it is None"):
        get_advantage_estimator("opo")(HAND_REWARDS, 3)
    with pytest.raises(ValueError, match="completion 1 has length -1"):
        get_advantage_estimator("opo")(HAND_REWARDS, 3, completion_lengths=torch.tensor([1, -1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="'gdpo' needs rewards_per_func"):
        get_advantage_estimator("gdpo")(HAND_REWARDS, 3, reward_weights=torch.ones(1))
    with pytest.raises(ValueError, match="'gdpo' needs reward_weights"):
        get_advantage_estimator("gdpo")(HAND_REWARDS, 3, rewards_per_func=torch.ones(6, 2))
    with pytest.raises(ValueError, match=r"reward_weights must have shape \[2\], got \[3\]"):
        get_advantage_estimator("gdpo")(
            HAND_REWARDS, 3, rewards_per_func=torch.ones(6, 2), reward_weights=torch.ones(3)
        )
    with pytest.raises(ValueError, match="option scale_rewards must be"):
        call("grpo", HAND_REWARDS, 3, scale_rewards="groups")
    with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
        call("grpo", HAND_REWARDS, 3, epsilon=0.0)


# ---------------------------------------------------------------------------------------------
# dtype, device, exact zeros
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", BUILTINS)
def test_output_dtype_device_and_shape(name, dtype):
    rewards = random_rewards(4, 4, seed=7, dtype=dtype)
    advantages = call(name, rewards, 4)
    assert advantages.dtype == dtype and advantages.device == rewards.device and advantages.shape == (16,)
    assert torch.isfinite(advantages).all()


@pytest.mark.parametrize("name", [name for name in BUILTINS if name != "reinforce_pp"])
def test_zero_variance_and_unscorable_groups_give_exact_zeros(name):
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, NAN, NAN, NAN, NAN, 0.0, 0.0, 0.0, 0.0])
    assert torch.equal(call(name, rewards, 4), torch.zeros(12))


def test_reinforce_pp_constant_batch_gives_exact_zeros():
    rewards = torch.tensor([2.0, NAN, 2.0, 2.0])
    assert torch.equal(call("reinforce_pp", rewards, 2), torch.zeros(4))


# ---------------------------------------------------------------------------------------------
# Hypothesis properties
# ---------------------------------------------------------------------------------------------

moderate = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
extreme = st.one_of(
    st.floats(min_value=-1e30, max_value=1e30, allow_nan=False, allow_infinity=False),
    st.sampled_from([1e30, -1e30, 0.0, 1.0, -1.0]),
)


@st.composite
def reward_batches(draw, elements=moderate, with_nan=True):
    g = draw(st.integers(min_value=2, max_value=5))
    num_prompts = draw(st.integers(min_value=1, max_value=4))
    element = st.one_of(elements, st.just(NAN)) if with_nan else elements
    values = draw(st.lists(element, min_size=num_prompts * g, max_size=num_prompts * g))
    return torch.tensor(values, dtype=torch.float64), g


PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)


@PROPERTY_SETTINGS
@given(batch=reward_batches(), shift=st.floats(min_value=-1e3, max_value=1e3))
def test_shift_invariance(batch, shift):
    rewards, g = batch
    for name in ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"]:
        torch.testing.assert_close(call(name, rewards + shift, g), call(name, rewards, g), atol=1e-7, rtol=1e-7)


@PROPERTY_SETTINGS
@given(batch=reward_batches())
def test_group_sums_are_zero(batch):
    rewards, g = batch
    scale = 1.0 + float(rewards.nan_to_num().abs().max())
    for name in ["dr_grpo", "rloo"]:
        sums = call(name, rewards, g).view(-1, g).sum(dim=1)
        torch.testing.assert_close(sums, torch.zeros_like(sums), atol=1e-9 * scale, rtol=0)
    lengths = common_inputs(rewards)["completion_lengths"].double()
    weighted_sums = (lengths * call("opo", rewards, g)).view(-1, g).sum(dim=1)
    torch.testing.assert_close(weighted_sums, torch.zeros_like(weighted_sums), atol=1e-8 * scale, rtol=0)


@PROPERTY_SETTINGS
@given(batch=reward_batches(elements=extreme), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_extreme_rewards_give_finite_advantages(batch, dtype):
    rewards, g = batch
    rewards = rewards.to(dtype)
    for name in BUILTINS:
        advantages = call(name, rewards, g)
        assert torch.isfinite(advantages).all(), name
        assert torch.all(advantages[torch.isnan(rewards)] == 0), name
    token_level = call("reinforce_pp", rewards, g, gamma=0.9)
    assert torch.isfinite(token_level).all()


@PROPERTY_SETTINGS
@given(batch=reward_batches(), data=st.data())
def test_unscorable_completions_get_zero_and_do_not_change_the_others(batch, data):
    rewards, g = batch
    for name in BUILTINS:
        advantages = call(name, rewards, g)
        assert not torch.isnan(advantages).any(), name
        assert torch.all(advantages[torch.isnan(rewards)] == 0), name
    # group-local estimators: the first group's advantages do not depend on the other groups
    first_group = rewards[:g].clone()
    other = data.draw(st.lists(moderate, min_size=rewards.numel() - g, max_size=rewards.numel() - g))
    changed = torch.cat([first_group, torch.tensor(other, dtype=torch.float64)])
    for name in ["grpo", "dr_grpo", "rloo", "opo", "grpo_passk"]:
        torch.testing.assert_close(call(name, changed, g)[:g], call(name, rewards, g)[:g], atol=1e-12, rtol=1e-12)


@PROPERTY_SETTINGS
@given(
    value=moderate,
    g=st.integers(min_value=2, max_value=6),
    num_prompts=st.integers(min_value=1, max_value=3),
    tie_position=st.integers(min_value=0, max_value=5),
)
def test_constant_and_tied_rewards(value, g, num_prompts, tie_position):
    rewards = torch.full((num_prompts * g,), value, dtype=torch.float64)
    for name in BUILTINS:
        advantages = call(name, rewards, g)
        torch.testing.assert_close(advantages, torch.zeros_like(advantages), atol=1e-6, rtol=0)
    # two completions tied at the top: the first wins with a zero gap, so nobody gets an advantage
    tied = torch.arange(g, dtype=torch.float64) + value
    tied[tie_position % (g - 1)] = tied[-1]
    assert torch.equal(call("grpo_passk", tied, g), torch.zeros(g, dtype=torch.float64))
