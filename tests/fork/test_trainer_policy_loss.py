"""Policy losses on the plain TRL path: ppo_clip is stock TRL bitwise, every built-in trains, schedules, mixing."""
from __future__ import annotations

import pytest
import torch
import trl

import grpo_custom
from tests.fork.test_trainer import _train as train
from tests.helpers import changed_parameters, cpu_training_kwargs

STEPS = 3


def _train(model_dir, tmp_path, *, trainer_class=None, config_class=None, steps=STEPS, record=None, **overrides):
    """``tests.fork.test_trainer._train`` with the fork as default and the start-up reward check off."""
    trainer_class = trainer_class or grpo_custom.GRPOTrainer
    config_class = config_class or grpo_custom.GRPOConfig
    if config_class is grpo_custom.GRPOConfig:
        overrides.setdefault("check_rewards", "off")
    return train(trainer_class, config_class, model_dir, tmp_path, steps=steps, record=record, **overrides)


def _history(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def _weights(model):
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


@pytest.fixture(scope="module")
def stock_run(tiny_model_dir, tmp_path_factory):
    return _train(tiny_model_dir, tmp_path_factory.mktemp("stock"), trainer_class=trl.GRPOTrainer,
                  config_class=trl.GRPOConfig, epsilon_high=0.28)


@pytest.mark.parametrize("how", ["default", "through_the_hook"])
def test_ppo_clip_reproduces_stock_trl_bitwise_over_three_steps(stock_run, tiny_model_dir, tmp_path, how):
    """Default: TRL's own code runs. Through the hook: the registered ppo_clip (passed as a callable, so the
    fork's policy-loss hook replaces TRL's per-token loss) gives the same bits."""
    stock, stock_model, _ = stock_run
    options = {} if how == "default" else {"policy_loss": grpo_custom.get_policy_loss("ppo_clip")}
    fork, fork_model, _ = _train(tiny_model_dir, tmp_path, epsilon_high=0.28, **options)
    assert fork.grpo_custom.policy_loss.stock == (how == "default")
    assert len(_history(stock, "loss")) == STEPS
    assert _history(fork, "loss") == _history(stock, "loss")
    assert _history(fork, "grad_norm") == _history(stock, "grad_norm")
    stock_weights, fork_weights = _weights(stock_model), _weights(fork_model)
    assert all(torch.equal(stock_weights[name], fork_weights[name]) for name in stock_weights)
    if how == "through_the_hook":
        assert len(_history(fork, "policy_loss/clip_frac")) == STEPS


@pytest.mark.parametrize("name", grpo_custom.list_policy_losses())
def test_every_registered_policy_loss_trains_lora_and_keeps_base_frozen(name, tiny_model_dir, tmp_path):
    trainer, model, before = _train(tiny_model_dir, tmp_path, steps=2, policy_loss=name, loss_type="grpo",
                                    num_iterations=2)
    trainable, frozen = changed_parameters(model, before)
    assert trainable and all("lora_" in key for key in trainable), name
    assert not frozen, (name, sorted(frozen)[:3])
    losses = _history(trainer, "loss")
    assert len(losses) == 2 and all(loss == loss for loss in losses)
    _, metrics = grpo_custom.get_policy_loss(name)(*(torch.zeros(1, 2) for _ in range(3)), torch.ones(1, 2))
    if trainer.grpo_custom.policy_loss.stock:  # ppo_clip with the config's trust region: TRL's own code, no metrics
        assert name == "ppo_clip"
        return
    for key in metrics:
        assert len(_history(trainer, f"policy_loss/{key}")) == 2, (name, key)


def test_policy_loss_options_and_callables_reach_the_loss(tiny_model_dir, tmp_path):
    seen = []

    def reinforce(log_probs, old_log_probs, advantages, mask, *, scale=1.0):
        seen.append(float(scale))
        return -scale * advantages * log_probs, {"scale": torch.tensor(float(scale))}

    trainer, model, before = _train(tiny_model_dir, tmp_path, steps=2, policy_loss=reinforce,
                                    policy_loss_kwargs={"scale": 0.5})
    assert seen and set(seen) == {0.5}
    assert _history(trainer, "policy_loss/scale") == [0.5, 0.5]
    assert changed_parameters(model, before)[0]


def test_scheduled_epsilon_is_logged_per_step_and_used(tiny_model_dir, tmp_path):
    schedule = grpo_custom.Schedule.linear(0.1, 0.3, 0, 3)
    calls = []
    ppo_clip = grpo_custom.get_policy_loss("ppo_clip")

    def recording(log_probs, old_log_probs, advantages, mask, *, epsilon_low, epsilon_high, delta=None):
        calls.append((float(epsilon_low), float(epsilon_high)))
        assert isinstance(epsilon_low, torch.Tensor)  # scheduled values enter as tensors
        return ppo_clip(log_probs, old_log_probs, advantages, mask, epsilon_low=epsilon_low,
                        epsilon_high=epsilon_high, delta=delta)

    trainer, _, _ = _train(tiny_model_dir, tmp_path, policy_loss=recording, epsilon=schedule)
    logged = _history(trainer, "policy_loss/epsilon_low")
    steps = [entry["step"] for entry in trainer.state.log_history if "policy_loss/epsilon_low" in entry]
    assert logged == pytest.approx([schedule(step - 1) for step in steps]) and len(logged) == STEPS
    assert _history(trainer, "policy_loss/epsilon_high") == logged  # epsilon_high unset: follows epsilon
    assert [low for low, _ in calls] == pytest.approx([schedule(step) for step in range(STEPS)])
    assert trainer.args.epsilon == pytest.approx(0.1)  # TRL's own field holds the value at step 0


def test_config_validates_policy_loss_options_at_construction(tmp_path):
    def config(**overrides):
        return grpo_custom.GRPOConfig(**cpu_training_kwargs(str(tmp_path), check_rewards="off", **overrides))

    with pytest.raises(KeyError, match="Registered policy-loss functions: ppo_clip"):
        config(policy_loss="ppo")
    with pytest.raises(ValueError, match="Unknown option 'tau' for policy loss 'sapo'"):
        config(policy_loss="sapo", policy_loss_kwargs={"tau": 1.0})
    with pytest.raises(ValueError, match="clip_ratio_c"):
        config(policy_loss="dual_clip", policy_loss_kwargs={"clip_ratio_c": 0.5})
    with pytest.raises(ValueError, match="loss_type='cispo'"):
        config(policy_loss="gspo", loss_type="cispo")
    with pytest.raises(ValueError, match="importance_sampling_level='sequence'"):
        config(policy_loss="gspo", importance_sampling_level="sequence")
    with pytest.raises(ValueError, match="epsilon"):
        config(epsilon=grpo_custom.Schedule.linear(0.2, 0.1, 0, 5), loss_type="cispo")
    assert config(policy_loss="dual_clip", policy_loss_kwargs={"clip_ratio_c": grpo_custom.Schedule.constant(2.0)})


def test_mixed_estimator_is_the_weighted_sum_of_its_components(tiny_model_dir, tmp_path):
    weight = grpo_custom.Schedule.linear(1.0, 0.0, 0, 2)
    batches = []
    trainer, model, before = _train(tiny_model_dir, tmp_path, steps=2, record=batches,
                                    advantage_estimator={"grpo": 0.5, "rloo": weight})
    assert changed_parameters(model, before)[0]
    grpo = grpo_custom.get_advantage_estimator("grpo")
    rloo = grpo_custom.get_advantage_estimator("rloo")
    assert len(batches) == 2
    for step, entry in enumerate(e for e in trainer.state.log_history if "advantages/mean" in e):
        assert entry["advantages/grpo/weight"] == 0.5
        assert entry["advantages/rloo/weight"] == pytest.approx(weight(step))
        assert {"advantages/grpo/mean", "advantages/grpo/std", "advantages/rloo/abs_max"} <= set(entry)
    mixed = trainer.grpo_custom.estimator
    generator = torch.Generator().manual_seed(0)
    for step in range(2):
        rewards = torch.rand(8, generator=generator)
        want = 0.5 * grpo(rewards, 4) + weight(step) * rloo(rewards, 4)
        torch.testing.assert_close(mixed(rewards, 4, step=step), want, rtol=0, atol=0)
