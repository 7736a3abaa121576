"""The estimator inputs object: keyword-contract and inputs-contract estimators both work, everywhere."""
from __future__ import annotations

import inspect

import pytest
import torch

from grpo_custom.algorithms.estimators import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    call_estimator,
    get_advantage_estimator,
    register_advantage_estimator,
    validate_estimator_options,
)
from grpo_custom.algorithms.estimators.mixing import mix_estimators

REWARDS = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.0, 3.0], dtype=torch.float64)
MASK = torch.ones(6, 3)
LENGTHS = torch.tensor([3, 1, 2, 3, 2, 1])


def inputs() -> AdvantageInputs:
    return AdvantageInputs(rewards=REWARDS, num_generations=3, completion_lengths=LENGTHS, completion_mask=MASK,
                           rewards_per_func=REWARDS.unsqueeze(1), reward_weights=torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "opo",
                                  "grpo_passk", "gdpo"])
def test_builtins_give_the_same_advantages_through_both_contracts(name):
    estimator = get_advantage_estimator(name)
    by_keywords = estimator(REWARDS, 3, completion_lengths=LENGTHS, completion_mask=MASK,
                            rewards_per_func=REWARDS.unsqueeze(1), reward_weights=torch.ones(1, dtype=torch.float64))
    assert torch.equal(estimator(inputs()), by_keywords)
    assert torch.equal(call_estimator(estimator, inputs(), {}), by_keywords)
    assert "inputs" not in inspect.signature(estimator).parameters  # the keyword contract is what inspect shows


def test_old_style_user_estimator_keeps_working():
    seen = {}

    def centered(rewards, num_generations, *, completion_lengths=None, completion_mask=None, rewards_per_func=None,
                 reward_weights=None, epsilon=1e-4, shift=0.0):
        """A_i = r_i − mean + shift (keyword contract)."""
        seen.update(lengths=completion_lengths, mask=completion_mask, epsilon=epsilon)
        return rewards - rewards.mean() + shift

    validate_estimator_options(centered, {"shift": 1.0, "epsilon": 1e-3})
    got = call_estimator(centered, inputs(), {"shift": 1.0, "epsilon": 1e-3})
    assert torch.equal(got, REWARDS - REWARDS.mean() + 1.0)
    assert seen["lengths"] is LENGTHS and seen["mask"] is MASK and seen["epsilon"] == 1e-3
    mixed = mix_estimators({centered: 0.5, "dr_grpo": 0.5}, {"centered": {"shift": 2.0}})
    expected = 0.5 * (REWARDS - REWARDS.mean() + 2.0) + 0.5 * get_advantage_estimator("dr_grpo")(REWARDS, 3)
    torch.testing.assert_close(mixed(inputs()), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(mixed(REWARDS, 3), expected, rtol=0, atol=1e-15)


def test_new_style_user_estimator_registers_and_works_both_ways():
    @register_advantage_estimator("test_value_baseline")
    def value_baseline(inputs: AdvantageInputs, *, scale: float = 1.0) -> torch.Tensor:
        """A_i = scale · (r_i − mean over its tokens of V)."""
        baseline = (inputs.values * inputs.completion_mask).sum(1) / inputs.completion_mask.sum(1)
        return scale * (inputs.rewards - baseline)

    try:
        registered = get_advantage_estimator("test_value_baseline")
        assert registered.inputs_function.__name__ == "value_baseline"
        validate_estimator_options("test_value_baseline", {"scale": 2.0})
        with pytest.raises(ValueError, match="Unknown option 'scal'.*Accepted options: scale"):
            validate_estimator_options("test_value_baseline", {"scal": 2.0})
        with pytest.raises(ValueError, match="inputs the trainer supplies"):
            validate_estimator_options("test_value_baseline", {"values": None})
        data = inputs()
        data.values = torch.full((6, 3), 0.5, dtype=torch.float64)
        assert torch.equal(call_estimator(registered, data, {"scale": 2.0}), 2.0 * (REWARDS - 0.5))
        with pytest.raises(TypeError, match="'NoneType'"):  # the keyword contract carries no values
            registered(REWARDS, 3, completion_mask=MASK, scale=2.0)
    finally:
        ADVANTAGE_ESTIMATORS.unregister("test_value_baseline")


def test_unregistered_new_style_callable_is_validated_and_called():
    def doubled(inputs, *, factor=2.0):
        """A_i = factor · r_i."""
        return factor * inputs.rewards

    validate_estimator_options(doubled, {"factor": 3.0})
    with pytest.raises(ValueError, match="Unknown option 'epsilon'"):  # an inputs-contract option like any other
        validate_estimator_options(doubled, {"epsilon": 1e-3})
    assert torch.equal(call_estimator(doubled, inputs(), {"factor": 3.0}), 3.0 * REWARDS)


def test_inputs_object_checks_shapes():
    with pytest.raises(ValueError, match=r"values has shape \(6, 2\), expected the completion mask's \(6, 3\)"):
        AdvantageInputs(rewards=REWARDS, num_generations=3, completion_mask=MASK, values=torch.zeros(6, 2))
    with pytest.raises(ValueError, match="token_rewards has 5 rows for 6 rewards"):
        AdvantageInputs(rewards=REWARDS, num_generations=3, token_rewards=torch.zeros(5, 3))
