"""The fork on the plain TRL path: equivalence with stock TRL, every estimator trains, metrics, habits."""
from __future__ import annotations

import pytest
import torch
import trl

import grpo_custom
from grpo_custom.testing.length_task import length_dataset
from tests.helpers import changed_parameters, cpu_training_kwargs, letter_fraction_reward, lora_model, snapshot


def _train(trainer_class, config_class, model_dir, tmp_path, steps=2, record=None, **overrides):
    model, tokenizer = lora_model(model_dir)
    before = snapshot(model)
    args = config_class(**cpu_training_kwargs(str(tmp_path), max_steps=steps, **overrides))
    trainer = trainer_class(model=model, reward_funcs=[letter_fraction_reward], args=args,
                            train_dataset=length_dataset(16), processing_class=tokenizer)
    if record is not None:
        generate = trainer._generate_and_score_completions

        def recording(inputs):
            output = generate(inputs)
            record.append(output["advantages"].detach().clone())
            return output

        trainer._generate_and_score_completions = recording
    trainer.train()
    return trainer, model, before


@pytest.fixture(scope="module")
def stock_and_fork(tiny_model_dir, tmp_path_factory):
    stock_advantages, fork_advantages = [], []
    stock = _train(trl.GRPOTrainer, trl.GRPOConfig, tiny_model_dir, tmp_path_factory.mktemp("stock"), steps=3,
                   record=stock_advantages)
    forked = _train(grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, tiny_model_dir,
                    tmp_path_factory.mktemp("fork"), steps=3, record=fork_advantages, check_rewards="off")
    return stock, forked, stock_advantages, fork_advantages


def test_grpo_estimator_reproduces_stock_trl_advantages_loss_and_weights(stock_and_fork):
    (stock, stock_model, _), (forked, fork_model, _), stock_adv, fork_adv = stock_and_fork
    assert type(forked).__module__ == "trl.trainer.grpo_custom_fork"
    assert forked.grpo_custom.estimator_is_trls  # the default run reuses TRL's inline advantages
    assert len(stock_adv) == len(fork_adv) == 3
    for a, b in zip(stock_adv, fork_adv):
        assert torch.equal(a, b)
    stock_losses = [h["loss"] for h in stock.state.log_history if "loss" in h]
    fork_losses = [h["loss"] for h in forked.state.log_history if "loss" in h]
    assert stock_losses == fork_losses and len(stock_losses) == 3
    for (name, a), (_, b) in zip(stock_model.named_parameters(), fork_model.named_parameters()):
        assert torch.equal(a, b), name


def test_fork_logs_advantage_metrics_every_step(stock_and_fork):
    _, (forked, _, _), _, fork_adv = stock_and_fork
    logged = [h for h in forked.state.log_history if "advantages/mean" in h]
    assert len(logged) == 3
    for entry, advantages in zip(logged, fork_adv):
        assert entry["advantages/mean"] == pytest.approx(advantages.mean().item(), abs=1e-6)
        assert entry["advantages/std"] == pytest.approx(advantages.std().item(), rel=1e-5)
        assert entry["advantages/abs_max"] == pytest.approx(advantages.abs().max().item(), rel=1e-6)
    # the completions table holds the estimator's advantages
    assert list(forked._logs["advantages"]) == pytest.approx(fork_adv[-1].tolist())


@pytest.mark.parametrize("estimator", grpo_custom.list_advantage_estimators())
def test_every_registered_estimator_trains_lora_and_keeps_base_frozen(estimator, tiny_model_dir, tmp_path):
    options = {"gamma": 0.9} if estimator == "reinforce_pp" else None
    if estimator == "gae":  # needs a value function (issue 22): without one the config names both options
        with pytest.raises(ValueError, match=r"advantage_estimator='gae' needs a learned value function: set "
                                             r"value_function"):
            _train(grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, tiny_model_dir, tmp_path,
                   advantage_estimator=estimator, check_rewards="off")
        with pytest.raises(ValueError, match=r"advantage_estimator='gae' needs a learned value function"):
            grpo_custom.GRPOConfig(output_dir=str(tmp_path), advantage_estimator=grpo_custom.get_advantage_estimator(
                "gae"))  # the registered function itself, not only its name
        return
    trainer, model, before = _train(grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, tiny_model_dir, tmp_path,
                                    advantage_estimator=estimator, advantage_estimator_kwargs=options,
                                    check_rewards="off")
    trainable, frozen = changed_parameters(model, before)
    assert trainable, f"{estimator}: no LoRA weight changed"
    assert all("lora_" in name for name in trainable)
    assert not frozen, f"{estimator}: frozen weights changed: {sorted(frozen)[:3]}"
    assert trainer.grpo_custom.estimator is grpo_custom.get_advantage_estimator(estimator)


def test_custom_callable_estimator_receives_the_contract(tiny_model_dir, tmp_path):
    calls = []

    def centered(rewards, num_generations, *, completion_lengths=None, completion_mask=None,
                 rewards_per_func=None, reward_weights=None, epsilon=1e-4, scale=1.0):
        calls.append((rewards.shape, num_generations, completion_lengths.shape, completion_mask.shape,
                      rewards_per_func.shape, reward_weights.tolist(), scale))
        grouped = rewards.view(-1, num_generations)
        return (scale * (grouped - grouped.mean(1, keepdim=True))).view(-1)

    _, model, before = _train(grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, tiny_model_dir, tmp_path,
                              advantage_estimator=centered, advantage_estimator_kwargs={"scale": 2.0},
                              check_rewards="off")
    assert calls and calls[0][:3] == (torch.Size([4]), 4, torch.Size([4]))
    assert calls[0][3][0] == 4 and calls[0][4] == torch.Size([4, 1]) and calls[0][5] == [1.0] and calls[0][6] == 2.0
    assert changed_parameters(model, before)[0]


def test_config_validation_names_the_culprit():
    with pytest.raises(ValueError, match="Unknown advantage estimator 'rlooo'.*grpo"):
        grpo_custom.GRPOConfig(output_dir="x", advantage_estimator="rlooo", report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="gama"):
        grpo_custom.GRPOConfig(output_dir="x", advantage_estimator="reinforce_pp",
                               advantage_estimator_kwargs={"gama": 0.9}, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="reward_errors"):
        grpo_custom.GRPOConfig(output_dir="x", reward_errors="ignore", report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"entropy_kernel='fused' is not valid; choose one of \['auto', 'keep_log_probs'"):
        grpo_custom.GRPOConfig(output_dir="x", entropy_kernel="fused", report_to="none", use_cpu=True)


def test_a_trl_script_runs_unchanged_on_grpo_custom_classes(tiny_model_dir, tmp_path):
    """A stock trl.GRPOConfig passed to grpo_custom.GRPOTrainer trains with TRL's behaviour."""
    _, model, before = _train(grpo_custom.GRPOTrainer, trl.GRPOConfig, tiny_model_dir, tmp_path)
    assert changed_parameters(model, before)[0]
    assert not changed_parameters(model, before)[1]


def test_recomputed_grpo_estimator_equals_stock_trl(stock_and_fork, tiny_model_dir, tmp_path):
    """The default run reuses TRL's inline advantages; passing the estimator as a callable forces the fork to
    compute them itself: the result must still be TRL's, bitwise."""
    (stock, stock_model, _), _, stock_adv, _ = stock_and_fork
    recomputed_adv = []
    trainer, model, _ = _train(grpo_custom.GRPOTrainer, grpo_custom.GRPOConfig, tiny_model_dir, tmp_path, steps=3,
                               record=recomputed_adv, check_rewards="off",
                               advantage_estimator=grpo_custom.get_advantage_estimator("grpo"))
    assert not trainer.grpo_custom.estimator_is_trls
    for a, b in zip(stock_adv, recomputed_adv):
        assert torch.equal(a, b)
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h] == \
        [h["loss"] for h in stock.state.log_history if "loss" in h]
    for (name, a), (_, b) in zip(stock_model.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), name
