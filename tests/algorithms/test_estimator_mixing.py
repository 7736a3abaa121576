"""Mixed advantage estimators: the weighted sum of their components, constant and scheduled weights, checks."""
from __future__ import annotations

import pytest
import torch

from grpo_custom.algorithms.estimators import get_advantage_estimator
from grpo_custom.algorithms.estimators.mixing import mix_estimators


def rewards(seed: int, n: int = 12) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("step", [0, 3, 10])
def test_mix_is_the_weighted_sum_of_its_components(step):
    def weight(step):  # a schedule step -> float (e.g. grpo_custom.Schedule.linear(1.0, 0.0, 0, 10))
        return 1.0 - step / 10

    mix = mix_estimators({"grpo": 0.5, "rloo": weight, "dr_grpo": -0.25})
    r = rewards(step)
    want = (0.5 * get_advantage_estimator("grpo")(r, 4) + weight(step) * get_advantage_estimator("rloo")(r, 4)
            - 0.25 * get_advantage_estimator("dr_grpo")(r, 4))
    torch.testing.assert_close(mix(r, 4, step=step), want, rtol=1e-15, atol=1e-15)
    assert mix.weights_at(step) == {"grpo": 0.5, "rloo": pytest.approx(weight(step)), "dr_grpo": -0.25}


def test_token_level_component_broadcasts_sequence_ones():
    mask = torch.ones(8, 5)
    lengths = mask.sum(1)
    mix = mix_estimators({"grpo": 1.0, "reinforce_pp": 2.0}, {"reinforce_pp": {"gamma": 0.9}})
    r = rewards(1, 8)
    got = mix(r, 4, completion_mask=mask, completion_lengths=lengths)
    token = get_advantage_estimator("reinforce_pp")(r, 4, completion_mask=mask, completion_lengths=lengths, gamma=0.9)
    assert got.shape == (8, 5)
    torch.testing.assert_close(got, get_advantage_estimator("grpo")(r, 4).unsqueeze(-1) + 2.0 * token)


def test_component_defaults_and_options():
    mix = mix_estimators({"grpo": 1.0}, defaults={"grpo": {"scale_rewards": "none"}})
    r = rewards(2)
    torch.testing.assert_close(mix(r, 4), get_advantage_estimator("dr_grpo")(r, 4))
    mix = mix_estimators({"grpo": 1.0}, {"grpo": {"scale_rewards": "batch"}}, defaults={"grpo": {"scale_rewards": "none"}})
    torch.testing.assert_close(mix(r, 4), get_advantage_estimator("grpo")(r, 4, scale_rewards="batch"))


def test_bad_mixes_raise_naming_the_culprit():
    with pytest.raises(ValueError, match="non-empty"):
        mix_estimators({})
    with pytest.raises(ValueError, match="weight of 'rloo'"):
        mix_estimators({"rloo": float("nan")})
    with pytest.raises(KeyError, match="Unknown advantage estimator 'nope'"):
        mix_estimators({"nope": 1.0})
    with pytest.raises(ValueError, match=r"options given for \['dr_grpo'\]"):
        mix_estimators({"grpo": 1.0}, {"dr_grpo": {}})
    with pytest.raises(ValueError, match="Unknown option 'gama'"):
        mix_estimators({"reinforce_pp": 1.0}, {"reinforce_pp": {"gama": 0.9}})
    with pytest.raises(ValueError, match="weight of 'grpo' at step 2"):
        mix_estimators({"grpo": lambda step: float("inf")}).weights_at(2)
