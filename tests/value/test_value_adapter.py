"""The ``adapter`` kind: a critic LoRA adapter of its own on the policy's base model (TRL's path).

What trains and what does not, the critic's V and its gradient against a slow reference (a separate PEFT model
holding only the critic's LoRA), the policy's gradient left bitwise alone, checkpoints and resume.
"""
from __future__ import annotations

import pytest
import torch

import grpo_custom
from grpo_custom.testing.length_task import length_dataset
from grpo_custom.value.adapter import CRITIC_ADAPTER
from grpo_custom.value.critic import OLD_VALUES_KEY, RETURNS_KEY
from tests.helpers import cpu_training_kwargs, letter_fraction_reward, lora_model, snapshot

ADAPTER = {"kind": "adapter", "lr": 0.05, "adapter_lr": 0.01, "layers": [-1, 1]}


def _trainer(model_dir, output_dir, value_function=None, **overrides):
    model, tokenizer = lora_model(model_dir)
    options = dict(max_steps=2, check_rewards="off", advantage_estimator="gae",
                   advantage_estimator_kwargs={"lam": 0.95}, value_function=value_function or ADAPTER)
    options.update(overrides)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(output_dir), **options))
    return grpo_custom.GRPOTrainer(model=model, reward_funcs=[letter_fraction_reward], args=args,
                                   processing_class=tokenizer, train_dataset=length_dataset(16))


def _critic_state(trainer) -> dict:
    critic = trainer.grpo_custom.critic
    state = {f"head.{k}": v.detach().clone() for k, v in critic.head.state_dict().items()}
    state.update({k: v.detach().clone() for k, v in critic.adapter_params.items()})
    return state


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A 2-step run of the adapter kind and the parameters before it."""
    trainer = _trainer(tiny_model_dir, tmp_path_factory.mktemp("adapter"))
    before = snapshot(trainer.model)
    trainer.train()
    return trainer, before


def test_the_critic_adapter_trains_beside_the_policy_and_the_base_stays_frozen(trained):
    trainer, before = trained
    critic, model = trainer.grpo_custom.critic, trainer.model
    names = sorted(critic.adapter_params)
    # one LoRA A and B per adapted module of the policy's adapter (q_proj, v_proj of 2 layers)
    policy_lora = sorted(n for n in before if ".lora_" in n)
    assert names == sorted(n.replace(".default.", f".{CRITIC_ADAPTER}.") for n in policy_lora) and len(names) == 8
    assert all(float(p.detach().abs().sum()) > 0 for n, p in critic.adapter_params.items() if ".lora_B." in n)  # B starts at 0
    assert float(critic.head.linear.weight.detach().abs().sum()) > 0
    params = dict(model.named_parameters())
    moved = {name for name, value in before.items() if not torch.equal(params[name].detach(), value)}
    assert moved == set(policy_lora)  # the policy's LoRA trained; the frozen base did not move
    # outside its own forwards the critic adapter is off and needs no gradient; the policy optimizer lacks it
    assert model.active_adapter == "default" and not any(p.requires_grad for p in critic.adapter_params.values())
    in_policy_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in in_policy_optimizer for p in critic.adapter_params.values())
    assert critic.optimizer.updates == 2
    logged = [entry for entry in trainer.state.log_history if "value/loss" in entry]
    assert len(logged) == 2 and logged[0]["value/mean"] == 0.0 and logged[1]["value/mean"] != 0.0


def _generated_batch(trainer):
    rows = [{"prompt": row["prompt"]} for row in length_dataset(16).select([0] * 4)]
    trainer.model.train()
    return trainer._generate_and_score_completions(rows)


def _reference_values(trainer, model_dir, inputs):
    """V from a separate model: the base weights plus the critic's LoRA as its only adapter, through
    ``output_hidden_states`` (no hooks), and the trained head; returns (V [B, T], its LoRA parameters)."""
    reference, _ = lora_model(model_dir)
    critic = trainer.grpo_custom.critic
    weights = {name.replace(f".{CRITIC_ADAPTER}.", ".default."): p for name, p in critic.adapter_params.items()}
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    out = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    width = inputs["completion_ids"].shape[1]
    hidden = [out.hidden_states[i][:, -width - 1:-1] for i in critic.layers]  # the state before each token
    time = torch.arange(width, dtype=torch.float32) / trainer.max_completion_length
    return critic.head(hidden, time), {n: params[n] for n in weights}


def test_the_critics_values_and_gradients_equal_a_separate_model_holding_its_lora(trained, tiny_model_dir):
    trainer, _ = trained
    from grpo_custom.value.rollout import critic_values, critic_weights

    critic = trainer.grpo_custom.critic
    inputs = _generated_batch(trainer)
    mask = inputs["completion_mask"].bool()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
    with critic_weights(trainer, critic):
        values = critic_values(trainer, critic, ids, attention, mask.shape[1])
        grads = torch.autograd.grad((values * weights)[mask].sum(), list(critic.adapter_params.values()))
    reference, reference_params = _reference_values(trainer, tiny_model_dir, inputs)
    reference_grads = torch.autograd.grad((reference * weights)[mask].sum(), list(reference_params.values()))
    torch.testing.assert_close(values[mask], reference[mask], rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, reference_grads):
        assert float(want.abs().max()) > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    # V_old of the rollout came from the critic adapter too (same weights, no grad)
    torch.testing.assert_close(inputs[OLD_VALUES_KEY][mask], reference[mask].detach(), rtol=1e-5, atol=1e-6)
    # and the policy's own adapter gives other hidden states: the adapter kind is not the head kind
    with torch.no_grad():
        policy = critic_values(trainer, critic, ids, attention, mask.shape[1])
    assert float((policy - values.detach())[mask].abs().max()) > 1e-4


def test_the_critic_leaves_the_policy_gradient_bitwise_unchanged(trained):
    trainer, _ = trained
    inputs = _generated_batch(trainer)
    assert inputs[RETURNS_KEY].shape == inputs["completion_mask"].shape
    critic, config = trainer.grpo_custom.critic, trainer.args.value_function_config
    results = []
    for with_critic in (False, True):
        trainer.args.value_function_config = config if with_critic else None
        try:
            trainer.model.zero_grad(set_to_none=True)
            critic.optimizer.optimizer.zero_grad(set_to_none=True)
            loss = trainer.compute_loss(trainer.model, inputs)
            loss.backward()
        finally:
            trainer.args.value_function_config = config
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        results.append((grads, float(loss)))
    (plain, plain_loss), (with_critic, critic_loss) = results
    assert plain_loss == critic_loss and set(plain) == set(with_critic)
    assert all(torch.equal(plain[n], with_critic[n]) for n in plain)
    # the critic's own backward reached its adapter
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in critic.adapter_params.values())


def test_a_resumed_adapter_run_equals_the_uninterrupted_one(tiny_model_dir, tmp_path):
    full = _trainer(tiny_model_dir, tmp_path / "full", max_steps=3, save_strategy="steps", save_steps=1)
    full.train()
    resumed = _trainer(tiny_model_dir, tmp_path / "resumed", max_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert not (tmp_path / "full" / "checkpoint-2" / CRITIC_ADAPTER).exists()
    want, got = _critic_state(full), _critic_state(resumed)
    assert sorted(want) == sorted(got) and len(want) == 3 + 8  # head: weight, bias, return moments
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-7)
    full_weights = dict(full.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, full_weights[name], rtol=1e-5, atol=1e-7)
    assert full.grpo_custom.critic.optimizer.updates == resumed.grpo_custom.critic.optimizer.updates == 3


def test_saved_folders_hold_the_policy_adapter_alone_and_the_critic_beside_it(trained, tiny_model_dir, tmp_path):
    """Transformers' resume loads only the sub-folder adapters when a checkpoint has any, so a critic saved as a PEFT
    sub-folder would leave the policy's adapter unrestored: the critic travels in value_head.pt instead."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from grpo_custom.testing.tiny_model import load_tiny_model
    from grpo_custom.value.state import load_head

    trainer, _ = trained
    trainer.save_model(str(tmp_path / "saved"))
    assert not (tmp_path / "saved" / CRITIC_ADAPTER).exists()
    keys = set(load_file(str(tmp_path / "saved" / "adapter_model.safetensors")))
    assert len(keys) == 8 and not any(CRITIC_ADAPTER in key for key in keys)
    saved = load_head(str(tmp_path / "saved" / "value_head.pt"))
    assert saved["config"]["kind"] == "adapter"
    for name, param in trainer.grpo_custom.critic.adapter_params.items():
        assert torch.equal(saved["adapter"][name], param.detach().cpu())
    base, _ = load_tiny_model(tiny_model_dir)
    reloaded = dict(PeftModel.from_pretrained(base, str(tmp_path / "saved")).named_parameters())
    policy = {n: p for n, p in trainer.model.named_parameters() if ".default." in n}
    assert len(policy) == 8 and all(torch.equal(reloaded[n], p.detach()) for n, p in policy.items())


def test_model_dependent_settings_fail_when_the_trainer_is_built(tiny_model_dir, tmp_path):
    """Before any generation: the adapter kind on a policy without LoRA, a hidden state the model lacks."""
    from grpo_custom.testing.tiny_model import load_tiny_model

    model, tokenizer = load_tiny_model(tiny_model_dir)

    def build(value_function, policy=model):
        args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(tmp_path), max_steps=1, check_rewards="off",
                                                            advantage_estimator="gae", value_function=value_function))
        return grpo_custom.GRPOTrainer(model=policy, reward_funcs=[letter_fraction_reward], args=args,
                                       processing_class=tokenizer, train_dataset=length_dataset(16))

    with pytest.raises(ValueError, match=r"kind'\]='adapter'.*not a PEFT model: pass peft_config=LoraConfig"):
        build(ADAPTER)
    with pytest.raises(ValueError, match=r"value_function\['layers'\] has 99, but the model has 2 decoder layers"):
        build({"layers": [-1, 99]}, lora_model(tiny_model_dir)[0])
    with pytest.raises(ValueError, match=r"adapter_lr.*kind='head' has no adapter"):
        grpo_custom.GRPOConfig(**cpu_training_kwargs(str(tmp_path), advantage_estimator="gae",
                                                     value_function={"kind": "head", "adapter_lr": 0.1}))
