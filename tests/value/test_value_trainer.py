"""The critic on TRL's path: what trains and what does not, the gradients it adds, warm-up, checkpoints.

Tiny model + LoRA on the length task's prompts, ``advantage_estimator="gae"`` with a value function.
"""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import grpo_custom
from grpo_custom.testing.length_task import length_dataset
from grpo_custom.value.critic import OLD_VALUES_KEY, RETURNS_KEY
from tests.helpers import changed_parameters, cpu_training_kwargs, letter_fraction_reward, lora_model, snapshot

VALUE_METRICS = ("value/loss", "value/clipfrac", "value/explained_variance", "value/mean", "value/returns_mean")


def _trainer(model_dir, output_dir, value_function=None, callbacks=None, **overrides):
    model, tokenizer = lora_model(model_dir)
    options = dict(max_steps=2, check_rewards="off", advantage_estimator="gae",
                   advantage_estimator_kwargs={"lam": 0.95}, value_function=value_function or {"lr": 0.05})
    options.update(overrides)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(output_dir), **options))
    return grpo_custom.GRPOTrainer(model=model, reward_funcs=[letter_fraction_reward], args=args,
                                   processing_class=tokenizer, train_dataset=length_dataset(16), callbacks=callbacks)


def _head(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.grpo_custom.critic.head.state_dict().items()}


def test_detached_head_trains_alone_and_logs_its_metrics(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path)
    before = snapshot(trainer.model)
    trainer.train()
    trainable, frozen = changed_parameters(trainer.model, before)
    assert trainable and not frozen  # the policy's LoRA trained, the frozen base did not move
    head = _head(trainer)
    assert head["linear.weight"].abs().sum() > 0 and head["linear.bias"].abs() > 0  # it started at 0
    logged = [entry for entry in trainer.state.log_history if "value/loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert all(name in entry for name in VALUE_METRICS), sorted(entry)
        assert 0.0 <= entry["value/clipfrac"] <= 1.0 and entry["value/loss"] > 0
    assert logged[0]["value/mean"] == 0.0 and logged[1]["value/mean"] != 0.0  # V_old: zero head, then trained


def _generated_batch(trainer):
    rows = [{"prompt": row["prompt"]} for row in length_dataset(16).select([0] * 4)]
    trainer.model.train()
    return trainer._generate_and_score_completions(rows)


def _policy_grads(trainer, inputs, with_critic: bool) -> tuple[dict, float]:
    config = trainer.args.value_function_config
    if not with_critic:
        trainer.args.value_function_config = None  # the trainer then runs as if no critic were configured
    try:
        trainer.model.zero_grad(set_to_none=True)
        trainer.grpo_custom.critic.head.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
    finally:
        trainer.args.value_function_config = config
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return grads, float(loss)


@pytest.mark.parametrize("kind", ["head", "shared_head"])
def test_the_detached_head_leaves_the_policy_gradient_unchanged_the_shared_one_adds_to_it(tiny_model_dir, tmp_path,
                                                                                            kind):
    coef = {"coef": 0.5} if kind == "shared_head" else {}
    trainer = _trainer(tiny_model_dir, tmp_path, {"kind": kind, "lr": 0.05, **coef}, max_steps=1)
    trainer.train()  # a trained head (non-zero values) and the trainer's accumulation state
    inputs = _generated_batch(trainer)
    assert inputs[OLD_VALUES_KEY].shape == inputs[RETURNS_KEY].shape == inputs["completion_mask"].shape
    plain, plain_loss = _policy_grads(trainer, inputs, with_critic=False)
    assert trainer.grpo_custom.critic.head.linear.weight.grad is None
    with_critic, critic_loss = _policy_grads(trainer, inputs, with_critic=True)
    assert trainer.grpo_custom.critic.head.linear.weight.grad.abs().sum() > 0
    difference = max(float((with_critic[n] - plain[n]).abs().max()) for n in plain)
    if kind == "head":
        assert difference == 0.0 and critic_loss == plain_loss  # bitwise: the critic adds nothing to the policy
    else:
        scale = max(float(g.abs().max()) for g in plain.values())
        # coef·L_V reaches the adapter: far above float32 round-off (~1e-7 relative), which the head kind shows is 0
        assert difference > 1e-5 * scale and critic_loss > plain_loss
        # coef scales what reaches the policy (value and gradient), not the head's own gradient
        head_grad = trainer.grpo_custom.critic.head.linear.weight.grad.clone()
        config = trainer.args.value_function_config
        trainer.args.value_function_config = dataclasses.replace(config, coef=0.25)
        try:
            trainer.grpo_custom.critic.config = trainer.args.value_function_config
            half, half_loss = _policy_grads(trainer, inputs, with_critic=True)
        finally:
            trainer.args.value_function_config = trainer.grpo_custom.critic.config = config
        torch.testing.assert_close(trainer.grpo_custom.critic.head.linear.weight.grad, head_grad)
        assert half_loss - plain_loss == pytest.approx((critic_loss - plain_loss) / 2, rel=1e-4)
        for name in plain:
            torch.testing.assert_close(half[name] - plain[name], (with_critic[name] - plain[name]) / 2,
                                       rtol=1e-3, atol=1e-6 * scale)


def test_warmup_trains_the_critic_while_the_policy_stays_frozen(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    seen = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append((snapshot(model), _head(trainer)))

    trainer = _trainer(tiny_model_dir, tmp_path, {"lr": 0.05, "warmup_steps": 2}, max_steps=3, callbacks=[Record()])
    before = snapshot(trainer.model)
    trainer.train()
    lora = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    for weights, head in seen[:2]:  # warm-up: the LoRA did not move, the head did
        assert all(torch.equal(weights[name], before[name]) for name in lora)
    assert not torch.equal(seen[0][1]["linear.weight"], seen[1][1]["linear.weight"])
    assert any(not torch.equal(seen[2][0][name], before[name]) for name in lora)  # then the policy trains
    warmup = [entry["value/warmup"] for entry in trainer.state.log_history if "value/warmup" in entry]
    assert warmup == [1.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def resumed_runs(tiny_model_dir, tmp_path_factory):
    """An uninterrupted 3-step run saving every step, and a run resumed from its checkpoint-2."""
    full_dir = tmp_path_factory.mktemp("full")
    full = _trainer(tiny_model_dir, full_dir, max_steps=3, save_strategy="steps", save_steps=1)
    full.train()
    resumed = _trainer(tiny_model_dir, tmp_path_factory.mktemp("resumed"), max_steps=3)
    resumed.train(resume_from_checkpoint=str(full_dir / "checkpoint-2"))
    return full, resumed, full_dir


def test_a_resumed_run_equals_the_uninterrupted_one(resumed_runs):
    full, resumed, full_dir = resumed_runs
    for name in ("value_head.pt", "value_optimizer.pt"):
        assert (full_dir / "checkpoint-2" / name).exists()
    for key, value in _head(full).items():
        torch.testing.assert_close(_head(resumed)[key], value, rtol=1e-5, atol=1e-7)
    full_weights = dict(full.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, full_weights[name], rtol=1e-5, atol=1e-7)
    assert full.grpo_custom.critic.optimizer.updates == resumed.grpo_custom.critic.optimizer.updates == 3
    last = [entry for entry in full.state.log_history if "value/loss" in entry][-1]
    last_resumed = [entry for entry in resumed.state.log_history if "value/loss" in entry][-1]
    assert last_resumed["value/loss"] == pytest.approx(last["value/loss"], rel=1e-4)


def test_a_changed_value_setting_is_refused_by_name(resumed_runs, tiny_model_dir, tmp_path):
    _, _, full_dir = resumed_runs
    changed = _trainer(tiny_model_dir, tmp_path, {"lr": 0.01}, max_steps=3)
    with pytest.raises(ValueError, match=r"value_function\['lr'\]: 0.05 in the checkpoint, 0.01 now"):
        changed.train(resume_from_checkpoint=str(full_dir / "checkpoint-2"))


def test_save_model_writes_the_adapter_and_the_value_head_beside_it(resumed_runs, tmp_path):
    full, _, _ = resumed_runs
    full.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "adapter_model.safetensors").exists()
    from grpo_custom.value.state import load_head

    saved = load_head(os.path.join(tmp_path, "saved", "value_head.pt"))
    assert saved["config"]["lr"] == 0.05 and saved["layers"] == [2]
    for key, value in _head(full).items():
        assert torch.equal(saved["state_dict"][key], value.cpu())


def test_a_mix_with_gae_fits_the_critic_with_the_gae_components_options(tiny_model_dir, tmp_path):
    """The critic's returns use the mix's gae options: with V ≡ 0 (the fresh head) and the critic's λ = 1,
    R_t = γ^(L−1−t)·r of each completion (γ = 0.5 here, the mix's; the run-level default would be 1)."""
    trainer = _trainer(tiny_model_dir, tmp_path, {"lr": 0.05}, max_steps=1,
                       advantage_estimator={"gae": 0.5, "grpo": 0.5},
                       advantage_estimator_kwargs={"gae": {"gamma": 0.5, "lam": 0.95}})
    batch = _generated_batch(trainer)
    returns, mask = batch[RETURNS_KEY], batch["completion_mask"].bool()
    assert float(batch[OLD_VALUES_KEY].abs().max()) == 0.0
    checked = 0
    for row in range(returns.shape[0]):
        length = int(mask[row].sum())
        reward = float(returns[row, length - 1])
        expected = torch.tensor([reward * 0.5 ** (length - 1 - t) for t in range(length)])
        torch.testing.assert_close(returns[row, :length], expected, rtol=1e-6, atol=1e-7)
        checked += reward != 0.0 and length > 1
    assert checked > 0
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "value/loss" in entry]
    assert len(logged) == 1 and "advantages/gae/weight" in logged[0]
