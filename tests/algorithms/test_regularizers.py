"""Tests for grpo_custom.algorithms.regularizers: registry rules, config validation, gradients, hand values,
and contract checks parametrized over every registered regularizer."""
import math

import pytest
import torch
from torch import nn

from grpo_custom.algorithms.kl import KL_KINDS
from grpo_custom.algorithms.registry import UnknownNameError
from grpo_custom.algorithms.regularizers import (
    PLACEMENTS,
    REGULARIZERS,
    RegularizerInputs,
    RegularizerSpec,
    get_regularizer,
    list_regularizers,
    masked_mean,
    parse_regularizers,
    register_regularizer,
)

B, T = 3, 5

# Options a regularizer cannot run without; a new regularizer with a required option adds its entry here.
REQUIRED_OPTIONS = {"length": {"target": 3}}


class TwoLayers(nn.Module):
    """A tiny MLP for LoRA tests."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def lora_model():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so the norm and the gradients are not trivially zero
    return get_peft_model(TwoLayers(), LoraConfig(r=2, target_modules=["fc1", "fc2"], init_lora_weights=False))


def make_inputs(seed=0, dtype=torch.float64, model=None, requires_grad=False):
    """Random per-token inputs with a ragged mask (row lengths 5, 3, 1)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] + [0.0] * 4], dtype=dtype)

    def logps():
        return -2 * torch.rand(B, T, generator=generator, dtype=dtype)

    return RegularizerInputs(
        mask=mask,
        logps=logps().requires_grad_(requires_grad),
        old_logps=logps(),
        ref_logps=logps(),
        advantages=torch.randn(B, generator=generator, dtype=dtype),
        entropies=(3 * torch.rand(B, T, generator=generator, dtype=dtype)).requires_grad_(requires_grad),
        model=model,
        completion_lengths=mask.sum(-1),
    )


@pytest.fixture
def scratch_names():
    """Names registered by a test are unregistered afterwards."""
    names = []
    yield names
    for name in names:
        if name in REGULARIZERS:
            REGULARIZERS.unregister(name)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_builtins_registered_with_attributes():
    assert list_regularizers()[:4] == ["kl", "entropy", "length", "lora_l2"]
    kl = get_regularizer("kl")
    assert (kl.placement, kl.placements) == ("loss", ("loss", "reward"))
    assert (kl.needs_reference, kl.needs_entropy) == (True, False)
    entropy = get_regularizer("entropy")
    assert (entropy.placement, entropy.needs_entropy, entropy.needs_reference) == ("loss", True, False)
    assert get_regularizer("length").placement == "reward"
    assert get_regularizer("lora_l2").placement == "parameters"


def test_duplicate_name_rejected():
    with pytest.raises(ValueError, match="'kl' is already registered"):
        register_regularizer("kl")(lambda inputs: (inputs.mask, {"value": 0.0}))


def test_unknown_name_lists_registered():
    with pytest.raises(UnknownNameError, match=r"Unknown regularizer 'kll'.*kl, entropy, length, lora_l2"):
        get_regularizer("kll")


def test_signature_rules(scratch_names):
    with pytest.raises(TypeError, match=r"'with_kwargs'.*keyword-only.*\*\*kwargs"):
        register_regularizer("with_kwargs")(lambda inputs, **options: (inputs.mask, {"value": 0.0}))
    with pytest.raises(TypeError, match=r"'positional_option'.*'scale' must be keyword-only"):
        register_regularizer("positional_option")(lambda inputs, scale=1.0: (inputs.mask, {"value": 0.0}))
    with pytest.raises(TypeError, match="first positional parameter"):
        register_regularizer("no_inputs")(lambda *, scale=1.0: (None, {"value": 0.0}))
    with pytest.raises(TypeError, match=r"must take a keyword-only option `placement='loss'`"):
        register_regularizer("two_places", placement=("loss", "reward"))(lambda inputs: (inputs.mask, {"value": 0.0}))
    with pytest.raises(TypeError, match="single placement"):
        register_regularizer("one_place")(lambda inputs, *, placement="loss": (inputs.mask, {"value": 0.0}))
    with pytest.raises(ValueError, match="placement must be one of loss, reward, parameters"):
        register_regularizer("bad_place", placement="logits")
    for name in ("with_kwargs", "positional_option", "no_inputs", "two_places", "one_place", "bad_place"):
        assert name not in REGULARIZERS


# ---------------------------------------------------------------------------------------------
# Every registered regularizer: contract, shapes, metrics
# ---------------------------------------------------------------------------------------------


def _cases():
    for name in list_regularizers():
        for placement in get_regularizer(name).placements:
            yield name, placement


@pytest.mark.parametrize("name, placement", list(_cases()))
def test_every_regularizer_returns_documented_shape_and_value(name, placement, lora_model):
    options = dict(REQUIRED_OPTIONS.get(name, {}))
    if len(get_regularizer(name).placements) > 1:
        options["placement"] = placement
    spec = RegularizerSpec(name=name, coef=0.5, options=options)
    assert spec.placement == placement
    term, metrics = spec.compute(make_inputs(model=lora_model))
    expected_shape = {"loss": (B, T), "reward": (B,), "parameters": ()}[placement]
    assert tuple(term.shape) == expected_shape
    assert isinstance(metrics["value"], float) and math.isfinite(metrics["value"])
    assert all(isinstance(value, float) for value in metrics.values())


@pytest.mark.parametrize("name", [name for name, placement in _cases() if placement == "loss"])
def test_gradcheck_loss_placement(name):
    """Every per-token regularizer is differentiable w.r.t. logps and entropies (float64 gradcheck)."""
    inputs = make_inputs(seed=1)
    spec = RegularizerSpec(name=name, options=dict(REQUIRED_OPTIONS.get(name, {})))

    def term(logps, entropies):
        inputs.logps, inputs.entropies = logps, entropies
        return spec.compute(inputs)[0]

    logps = inputs.logps.detach().clone().requires_grad_(True)
    entropies = inputs.entropies.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(term, (logps, entropies))


@pytest.mark.parametrize("kind", KL_KINDS)
@pytest.mark.parametrize("grad_kind", [None, "k2"])
def test_gradcheck_kl_every_kind(kind, grad_kind):
    inputs = make_inputs(seed=2)
    spec = RegularizerSpec(name="kl", options={"kind": kind, "grad_kind": grad_kind})

    def term(logps):
        inputs.logps = logps
        return spec.compute(inputs)[0]

    logps = inputs.logps.detach().clone().requires_grad_(True)
    if grad_kind is None:
        assert torch.autograd.gradcheck(term, (logps,))
    else:  # straight-through: the gradient is k2's, −Δ per token
        term(logps).sum().backward()
        torch.testing.assert_close(logps.grad, logps.detach() - inputs.ref_logps)


@pytest.mark.parametrize("name", ["kl", "entropy"])
def test_loss_terms_work_inside_torch_func_grad(name):
    """Unsloth's fused loss takes gradients with torch.func.grad_and_value: the terms must work there."""
    inputs = make_inputs(seed=3)
    spec = RegularizerSpec(name=name)
    field_name = "logps" if name == "kl" else "entropies"

    def loss(x):
        setattr(inputs, field_name, x)
        term, _ = spec.compute(inputs)
        return masked_mean(term, inputs.mask)

    x = getattr(inputs, field_name).detach().clone()
    functional_grad, value = torch.func.grad_and_value(loss)(x)
    x_autograd = x.clone().requires_grad_(True)
    (autograd_grad,) = torch.autograd.grad(loss(x_autograd), x_autograd)
    torch.testing.assert_close(functional_grad, autograd_grad)


def test_compute_checks_user_term_shape(scratch_names):
    @register_regularizer("wrong_shape", placement="reward")
    def wrong_shape(inputs):
        """Returns a per-token term although its placement is reward."""
        return inputs.mask, {"value": 0.0}

    @register_regularizer("no_value")
    def no_value(inputs):
        """Forgets the 'value' metric."""
        return inputs.mask, {"mean": 0.0}

    scratch_names.extend(["wrong_shape", "no_value"])
    with pytest.raises(ValueError, match=r"'wrong_shape' with placement 'reward'.*\(3,\), got \(3, 5\)"):
        RegularizerSpec(name="wrong_shape").compute(make_inputs())
    with pytest.raises(ValueError, match="'no_value' must return a metrics dict with a 'value'"):
        RegularizerSpec(name="no_value").compute(make_inputs())


# ---------------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------------


def test_from_config_splits_name_coef_options():
    spec = RegularizerSpec.from_config({"name": "kl", "kind": "k1", "placement": "reward", "coef": 0.02})
    assert (spec.name, spec.coef, spec.options) == ("kl", 0.02, {"kind": "k1", "placement": "reward"})
    assert RegularizerSpec.from_config(spec) is spec
    assert RegularizerSpec.from_config({"name": "entropy"}).coef == 1.0


@pytest.mark.parametrize(
    "config, error, pattern",
    [
        ({"name": "kll"}, UnknownNameError, r"Unknown regularizer 'kll'.*kl, entropy, length, lora_l2"),
        ({"kind": "k3"}, ValueError, r"needs a 'name' key; got keys \['kind'\]"),
        ({"name": "kl", "knd": "k1"}, ValueError, r"Unknown option 'knd' for regularizer 'kl'\. Did you mean 'kind'\?"),
        ({"name": "kl", "beta": 0.1}, ValueError, r"'beta'.*Accepted options: kind, grad_kind, placement"),
        ({"name": "entropy", "kind": "k3"}, ValueError, r"Unknown option 'kind'.*Accepted options: \(none\)"),
        ({"name": "length"}, ValueError, r"'length' requires option\(s\) 'target'"),
        ({"name": "kl", "coef": -0.1}, ValueError, r"'kl': coef must be finite and ≥ 0, got -0\.1"),
        ({"name": "kl", "coef": float("nan")}, ValueError, "coef must be finite"),
        ({"name": "kl", "coef": float("inf")}, ValueError, "coef must be finite"),
        ({"name": "kl", "coef": "0.1"}, TypeError, r"coef must be a number or a callable.*str '0\.1'"),
        ({"name": "kl", "coef": True}, TypeError, "coef must be a number"),
        ({"name": "kl", "kind": "k4"}, ValueError, r"unknown kind='k4'.*k1, k2, k3, low_var_kl, abs, mse"),
        ({"name": "kl", "grad_kind": "k5"}, ValueError, r"unknown grad_kind='k5'"),
        ({"name": "kl", "placement": "parameters"}, ValueError, r"placement='parameters' is not supported.*loss"),
        ({"name": "kl", "placement": "reward", "grad_kind": "k2"}, ValueError, "grad_kind has no effect"),
        ({"name": "length", "target": 0}, ValueError, "target must be ≥ 1, got 0"),
        ({"name": "length", "target": 4.5}, ValueError, "target must be an int, got 4.5"),
        ({"name": "length", "target": 4, "mode": "quadratic"}, ValueError, r"unknown mode='quadratic'.*linear, soft"),
        ({"name": "length", "target": 4, "buffer": 2}, ValueError, "buffer only applies to mode='soft'"),
        ({"name": "length", "target": 4, "mode": "soft"}, ValueError, "needs buffer"),
        ({"name": "length", "target": 4, "mode": "soft", "max_length": 4}, ValueError, "ramp width must be ≥ 1"),
        (
            {"name": "length", "target": 4, "mode": "soft", "buffer": 2, "max_length": 7},
            ValueError,
            r"max_length=7 must equal target \+ buffer = 4 \+ 2",
        ),
    ],
)
def test_config_errors(config, error, pattern):
    with pytest.raises(error, match=pattern):
        RegularizerSpec.from_config(config)


def test_non_dict_configs_rejected():
    with pytest.raises(TypeError, match="must be a dict like"):
        RegularizerSpec.from_config("kl")
    with pytest.raises(TypeError, match="must be a list of configs"):
        parse_regularizers({"name": "kl"})


def test_coef_at_constant_and_callable():
    assert RegularizerSpec(name="entropy", coef=3).coef_at(100) == 3.0
    warmup = RegularizerSpec(name="entropy", coef=lambda step: min(step, 10) * 0.01)
    assert warmup.coef_at(0) == 0.0
    assert warmup.coef_at(5) == pytest.approx(0.05)
    assert warmup.coef_at(50) == pytest.approx(0.1)
    assert isinstance(warmup.coef_at(5), float)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5, "0.1", None, torch.tensor(0.1)])
def test_coef_at_rejects_bad_schedule_values(bad):
    spec = parse_regularizers([{"name": "kl"}, {"name": "kl", "coef": lambda step: bad}])[1]
    with pytest.raises(ValueError, match=r"Regularizer 'kl_1': coef schedule returned .* at step 7"):
        spec.coef_at(7)


def test_placement_and_needs_are_per_spec():
    specs = parse_regularizers(
        [
            {"name": "kl", "placement": "reward", "kind": "k1"},
            {"name": "kl"},
            {"name": "entropy", "coef": 0.01},
            {"name": "length", "target": 8},
            {"name": "lora_l2", "coef": 1e-4},
        ]
    )
    assert [spec.placement for spec in specs] == ["reward", "loss", "loss", "reward", "parameters"]
    assert [spec.needs_reference for spec in specs] == [True, True, False, False, False]
    assert [spec.needs_entropy for spec in specs] == [False, False, True, False, False]
    assert all(spec.placement in PLACEMENTS for spec in specs)


def test_metric_prefixes_are_unique():
    specs = parse_regularizers([{"name": "kl"}, {"name": "kl", "kind": "k2"}, {"name": "entropy"}, {"name": "kl"}])
    prefixes = [spec.metric_prefix for spec in specs]
    assert prefixes == ["regularizers/kl", "regularizers/kl_1", "regularizers/entropy", "regularizers/kl_2"]
    assert specs[1].options == {"kind": "k2"}
    assert parse_regularizers(None) == [] and parse_regularizers([]) == []
    assert RegularizerSpec(name="kl").metric_prefix == "regularizers/kl"


# ---------------------------------------------------------------------------------------------
# Built-in values
# ---------------------------------------------------------------------------------------------


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 3.0]))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_kl_loss_placement_is_trl_beta_term():
    inputs = make_inputs(seed=4, dtype=torch.float32)
    term, metrics = RegularizerSpec(name="kl").compute(inputs)
    delta = inputs.ref_logps - inputs.logps
    trl_term = torch.exp(delta) - delta - 1
    assert torch.equal(term, trl_term)
    expected_value = (trl_term * inputs.mask).sum() / inputs.mask.sum()
    assert metrics["value"] == pytest.approx(expected_value.item(), rel=1e-6)


def test_kl_reward_placement_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    logps = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]], dtype=torch.float64)
    ref_logps = torch.tensor([[-2.0, -2.0, 0.0], [-1.5, 0.0, 0.0]], dtype=torch.float64)
    inputs = RegularizerInputs(mask=mask, logps=logps, ref_logps=ref_logps)
    term, metrics = RegularizerSpec(name="kl", options={"placement": "reward", "kind": "k1"}).compute(inputs)
    # k1 = logp − ref: row 0 → 1 + 0 = 1; row 1 → 1. Three tokens in total carry KL 2.
    torch.testing.assert_close(term, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert metrics["value"] == pytest.approx(2 / 3)
    assert metrics["per_sequence"] == pytest.approx(1.0)


def test_kl_needs_reference_logps():
    inputs = make_inputs()
    inputs.ref_logps = None
    with pytest.raises(ValueError, match=r"'kl' needs inputs\.ref_logps"):
        RegularizerSpec(name="kl").compute(inputs)


def test_entropy_bonus_values():
    inputs = make_inputs(seed=5)
    term, metrics = RegularizerSpec(name="entropy").compute(inputs)
    assert torch.equal(term, -inputs.entropies)
    hand_mean = sum(inputs.entropies[b, t].item() for b in range(B) for t in range(T) if inputs.mask[b, t]) / 9
    assert metrics["value"] == pytest.approx(hand_mean)
    inputs.entropies = inputs.entropies[:, :2]
    with pytest.raises(ValueError, match=r"inputs\.entropies has shape \(3, 2\), expected the mask's shape \(3, 5\)"):
        RegularizerSpec(name="entropy").compute(inputs)


def _length_inputs(lengths):
    lengths = torch.tensor(lengths, dtype=torch.float32)
    return RegularizerInputs(mask=torch.ones(len(lengths), 1), completion_lengths=lengths)


def test_length_linear_by_hand():
    term, metrics = RegularizerSpec(name="length", options={"target": 4}).compute(_length_inputs([2, 4, 5, 8, 12]))
    # max(0, L − 4) / 4
    torch.testing.assert_close(term, torch.tensor([0.0, 0.0, 0.25, 1.0, 2.0]))
    assert metrics["value"] == pytest.approx(3.25 / 5)
    assert metrics["frac_penalized"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("window", [{"buffer": 4}, {"max_length": 10}, {"buffer": 4, "max_length": 10}])
def test_length_soft_by_hand_at_boundaries(window):
    spec = RegularizerSpec(name="length", options={"target": 6, "mode": "soft", **window})
    term, _ = spec.compute(_length_inputs([0, 5, 6, 7, 9, 10, 11, 40]))
    # 0 up to 6 (= L_max − L_cache), (L − 6)/4 up to 10 (= L_max), 1 beyond
    torch.testing.assert_close(term, torch.tensor([0.0, 0.0, 0.0, 0.25, 0.75, 1.0, 1.0, 1.0]))


def test_length_soft_is_minus_dapo_overlong_reward():
    l_max, l_cache = 20, 6

    def dapo_reward(length):  # arXiv 2503.14476, eq. 13
        if length <= l_max - l_cache:
            return 0.0
        if length <= l_max:
            return ((l_max - l_cache) - length) / l_cache
        return -1.0

    lengths = list(range(0, l_max + 4))
    spec = RegularizerSpec(name="length", options={"target": l_max - l_cache, "mode": "soft", "max_length": l_max})
    term, _ = spec.compute(_length_inputs(lengths))
    torch.testing.assert_close(-term, torch.tensor([dapo_reward(length) for length in lengths]))


def test_length_defaults_to_mask_lengths():
    inputs = make_inputs()  # mask row lengths 5, 3, 1
    inputs.completion_lengths = None
    term, _ = RegularizerSpec(name="length", options={"target": 2}).compute(inputs)
    torch.testing.assert_close(term, torch.tensor([1.5, 0.5, 0.0], dtype=torch.float64))


def test_lora_l2_norm_and_gradients(lora_model):
    lora_model.zero_grad(set_to_none=True)
    term, metrics = RegularizerSpec(name="lora_l2").compute(make_inputs(model=lora_model))
    named = dict(lora_model.named_parameters())
    lora_names = [name for name in named if ".lora_A." in name or ".lora_B." in name]
    assert len(lora_names) == 4
    hand = sum(float((named[name].detach() ** 2).sum()) for name in lora_names)
    assert term.item() == pytest.approx(hand, rel=1e-6)
    assert metrics["value"] == pytest.approx(hand, rel=1e-6)
    term.backward()
    for name, parameter in named.items():
        if name in lora_names:
            torch.testing.assert_close(parameter.grad, 2 * parameter.detach())
        else:
            assert parameter.grad is None or not parameter.grad.any(), name
    assert not named["base_model.model.fc1.base_layer.weight"].requires_grad


def test_lora_l2_errors():
    with pytest.raises(ValueError, match=r"model \(TwoLayers\) has no trainable LoRA weights"):
        RegularizerSpec(name="lora_l2").compute(make_inputs(model=TwoLayers()))
    with pytest.raises(ValueError, match=r"'lora_l2' needs inputs\.model"):
        RegularizerSpec(name="lora_l2").compute(make_inputs(model=None))
