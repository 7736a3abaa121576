"""Regularizers end to end on the plain TRL path: exactness at zero, TRL's beta, every built-in, effects, metrics."""
from __future__ import annotations

import pytest
import torch
import trl

import grpo_custom
from grpo_custom.testing.length_task import length_dataset
from tests.helpers import changed_parameters, cpu_training_kwargs, letter_fraction_reward, lora_model, snapshot

BETA = 0.5
STEPS = 3


class Recorder:
    """Wraps a trainer's ``_generate_and_score_completions`` and its reward function to keep what they produce."""

    def __init__(self):
        self.outputs = []  # one dict per generation: the trainer's batch, plus the sampling policy's log-probs
        self.rewards = []  # one [N] tensor per generation: the reward function's raw values

    def reward(self, prompts, completions, **kwargs):
        """``letter_fraction_reward``, recorded."""
        values = letter_fraction_reward(prompts, completions)
        self.rewards.append(torch.tensor(values, dtype=torch.float32))
        return values

    reward.__name__ = "letters"

    def attach(self, trainer) -> None:
        """Record every generated batch with the log-probs of the policy that sampled it."""
        generate = trainer._generate_and_score_completions

        def recording(inputs):
            output = generate(inputs)
            record = {key: value.detach().clone() for key, value in output.items() if torch.is_tensor(value)}
            record["policy_logps"] = _logps_and_entropies(trainer, output)[0]
            self.outputs.append(record)
            return output

        trainer._generate_and_score_completions = recording


def _logps_and_entropies(trainer, batch, model=None):
    """Per-token log-probs and entropies [B, T] of the batch's completions under ``model`` (default: the policy)."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            model if model is not None else trainer.model, input_ids, attention_mask,
            batch["completion_ids"].size(1), compute_entropy=True,
        )
    return logps, entropies


def _train(model_dir, output_dir, *, trainer_class=None, config_class=None, steps=STEPS, peft_config=False,
           recorder=None, **overrides):
    """Train the tiny model with a LoRA adapter (pre-wrapped, or made by the trainer from a ``peft_config``)."""
    from peft import LoraConfig

    from grpo_custom.testing.tiny_model import load_tiny_model

    trainer_class = trainer_class or grpo_custom.GRPOTrainer
    config_class = config_class or grpo_custom.GRPOConfig
    if config_class is grpo_custom.GRPOConfig:
        overrides.setdefault("check_rewards", "off")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    if peft_config:
        torch.manual_seed(0)
        model, tokenizer = load_tiny_model(model_dir)
    else:
        model, tokenizer = lora_model(model_dir)
    before = snapshot(model)
    args = config_class(**cpu_training_kwargs(str(output_dir), max_steps=steps, **overrides))
    trainer = trainer_class(
        model=model, reward_funcs=[recorder.reward if recorder else letter_fraction_reward], args=args,
        train_dataset=length_dataset(16), processing_class=tokenizer, peft_config=lora if peft_config else None,
    )
    if recorder is not None:
        recorder.attach(trainer)
    trainer.train()
    return trainer, before


def _history(trainer, key):
    """The value of ``key`` in every training log entry that has it, in step order."""
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def _lora_parameters(model):
    return {name: param.detach() for name, param in model.named_parameters() if "lora_" in name}


# ---------------------------------------------------------------------------------------------
# Every coefficient 0: exactly the run without regularizers
# ---------------------------------------------------------------------------------------------

ALL_AT_ZERO = [
    {"name": "kl", "kind": "k3", "coef": 0.0},
    {"name": "kl", "kind": "k1", "placement": "reward", "coef": 0.0},
    {"name": "entropy", "coef": 0.0},
    {"name": "length", "target": 4, "coef": 0.0},
    {"name": "lora_l2", "coef": grpo_custom.Schedule.constant(0.0)},
]


@pytest.fixture(scope="module")
def plain_and_zero(tiny_model_dir, tmp_path_factory):
    plain_recorder, zero_recorder = Recorder(), Recorder()
    plain = _train(tiny_model_dir, tmp_path_factory.mktemp("plain"), recorder=plain_recorder)
    zero = _train(tiny_model_dir, tmp_path_factory.mktemp("zero"), recorder=zero_recorder, regularizers=ALL_AT_ZERO)
    return plain, zero, plain_recorder, zero_recorder


def test_zero_coefficients_reproduce_the_unregularized_run_exactly(plain_and_zero):
    (plain, _), (zero, _), plain_rec, zero_rec = plain_and_zero
    assert [spec.label for spec in zero.grpo_custom.regularizers] == ["kl", "kl_1", "entropy", "length", "lora_l2"]
    assert _history(zero, "loss") == _history(plain, "loss") and len(_history(plain, "loss")) == STEPS
    assert _history(zero, "grad_norm") == _history(plain, "grad_norm")
    for plain_batch, zero_batch in zip(plain_rec.outputs, zero_rec.outputs, strict=True):
        assert torch.equal(plain_batch["completion_ids"], zero_batch["completion_ids"])
        assert torch.equal(plain_batch["advantages"], zero_batch["advantages"])
    plain_weights, zero_weights = _lora_parameters(plain.model), _lora_parameters(zero.model)
    assert all(torch.equal(plain_weights[name], zero_weights[name]) for name in plain_weights)
    # The zero-coefficient terms were computed (and are non-zero), yet contributed nothing.
    assert _history(zero, "regularizers/kl/value")[-1] > 0 and _history(zero, "regularizers/kl/loss")[-1] == 0.0
    assert _history(zero, "regularizers/length/value")[-1] > 0
    assert _history(zero, "regularizers/length/reward_penalty")[-1] == 0.0
    assert _history(zero, "regularizers/lora_l2/value")[-1] > 0 and _history(zero, "regularizers/lora_l2/loss")[-1] == 0


def test_zero_coefficients_give_exactly_the_same_gradients(plain_and_zero):
    (plain, _), (zero, _), _, zero_rec = plain_and_zero
    batch = {key: value for key, value in zero_rec.outputs[-1].items() if key != "policy_logps"}
    gradients = []
    for trainer in (plain, zero):
        trainer.model.train()
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        trainable = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        gradients.append((loss.detach(), trainable))
    (plain_loss, plain_grads), (zero_loss, zero_grads) = gradients
    assert torch.equal(plain_loss, zero_loss)
    assert plain_grads.keys() == zero_grads.keys() and any(g.abs().sum() > 0 for g in plain_grads.values())
    assert all(torch.equal(plain_grads[name], zero_grads[name]) for name in plain_grads)


# ---------------------------------------------------------------------------------------------
# kl(kind="k3", placement="loss", coef=β) is TRL's beta=β
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[False, True], ids=["no_bias_correction", "bias_correction"])
def stock_beta_and_fork_kl(request, tiny_model_dir, tmp_path_factory):
    correction = request.param
    stock = _train(tiny_model_dir, tmp_path_factory.mktemp("stock_beta"), trainer_class=trl.GRPOTrainer,
                   config_class=trl.GRPOConfig, peft_config=True, beta=BETA, use_bias_correction_kl=correction)
    recorder = Recorder()
    fork = _train(tiny_model_dir, tmp_path_factory.mktemp("fork_kl"), peft_config=True, recorder=recorder, beta=0.0,
                  use_bias_correction_kl=correction, regularizers=[{"name": "kl", "kind": "k3", "coef": BETA}])
    return correction, stock, fork, recorder


def test_kl_k3_in_the_loss_reproduces_trl_beta(stock_beta_and_fork_kl):
    correction, (stock, _), (fork, _), _ = stock_beta_and_fork_kl
    assert fork.beta == 0.0 and fork.ref_model is None  # PEFT: reference = the adapter-disabled model
    stock_kl, fork_kl = _history(stock, "kl"), _history(fork, "regularizers/kl/value")
    assert len(stock_kl) == STEPS and stock_kl[0] == 0.0 and stock_kl[-1] > 0.05  # the term matters
    stock_weights, fork_weights = _lora_parameters(stock.model), _lora_parameters(fork.model)
    assert stock_weights.keys() == fork_weights.keys()
    if not correction:
        # Same ops in the same order: bit-identical losses, KL, gradients and weights.
        assert _history(fork, "loss") == _history(stock, "loss")
        assert _history(fork, "grad_norm") == _history(stock, "grad_norm")
        assert fork_kl == stock_kl
        assert all(torch.equal(stock_weights[name], fork_weights[name]) for name in stock_weights)
    else:
        # TRL's default use_bias_correction_kl: the same ratio π/π_old multiplies the term, but TRL shares the
        # policy term's ratio tensor, so autograd sums the gradients in another order (float rounding only).
        assert _history(fork, "loss") == pytest.approx(_history(stock, "loss"), rel=1e-5, abs=1e-8)
        assert _history(fork, "grad_norm") == pytest.approx(_history(stock, "grad_norm"), rel=1e-5)
        assert fork_kl == pytest.approx(stock_kl, rel=1e-5, abs=1e-8)
        for name in stock_weights:
            torch.testing.assert_close(fork_weights[name], stock_weights[name], rtol=1e-5, atol=1e-6)
    # The logged contribution is β · (masked KL mean) under the grpo loss type (equal-length completions here).
    contributions = _history(fork, "regularizers/kl/loss")
    assert contributions == pytest.approx([BETA * value for value in fork_kl], rel=1e-4, abs=1e-8)
    assert _history(fork, "regularizers/kl/coef") == [BETA] * STEPS


def test_kl_reference_is_the_adapter_disabled_base_model(stock_beta_and_fork_kl):
    _, _, (fork, _), recorder = stock_beta_and_fork_kl
    batch = recorder.outputs[-1]
    with fork.model.disable_adapter():
        base_logps, _ = _logps_and_entropies(fork, batch)
    mask = batch["completion_mask"].bool()
    torch.testing.assert_close(batch["ref_per_token_logps"][mask], base_logps[mask], rtol=0, atol=1e-6)
    assert (batch["ref_per_token_logps"][mask] - batch["policy_logps"][mask]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Every registered regularizer trains the LoRA adapter and logs its metrics
# ---------------------------------------------------------------------------------------------

BUILTIN_CONFIGS = {
    "kl": [{"kind": "k2"}, {"kind": "low_var_kl", "grad_kind": "k2"}, {"kind": "k1", "placement": "reward"}],
    "entropy": [{}],
    "length": [{"target": 2}],
    "lora_l2": [{}],
}
CASES = [
    pytest.param(name, options, id=f"{name}-{'-'.join(map(str, options.values())) or 'default'}")
    for name in grpo_custom.list_regularizers()
    for options in BUILTIN_CONFIGS.get(name, [{}])
]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_every_registered_regularizer_trains_lora_and_logs_metrics(name, options, tiny_model_dir, tmp_path):
    coef = 0.3
    trainer, before = _train(tiny_model_dir, tmp_path, steps=2, regularizers=[{"name": name, "coef": coef, **options}])
    spec = trainer.grpo_custom.regularizers[0]
    trainable, frozen = changed_parameters(trainer.model, before)
    assert trainable and all("lora_" in n for n in trainable), f"{name}: no LoRA weight changed"
    assert not frozen, f"{name}: frozen weights changed: {sorted(frozen)[:3]}"
    prefix = f"regularizers/{name}"
    contribution = "reward_penalty" if spec.placement == "reward" else "loss"
    for key in ("value", "coef", contribution):
        values = _history(trainer, f"{prefix}/{key}")
        assert len(values) == 2 and all(torch.isfinite(torch.tensor(values))), (key, values)
    assert _history(trainer, f"{prefix}/coef") == [coef, coef]
    first = trainer.state.log_history[0]
    if name == "kl":
        assert first[f"{prefix}/value"] == 0.0  # a fresh adapter (B = 0) is the reference model
    elif name == "entropy":
        assert first[f"{prefix}/value"] == pytest.approx(first["entropy"], rel=1e-6)  # TRL's own entropy metric
        assert first[f"{prefix}/loss"] == pytest.approx(-coef * first["entropy"], rel=1e-5)
    elif name == "length":
        assert first["completions/min_length"] >= 2  # every completion is over the target: mean of (L − 2) / 2
        assert first[f"{prefix}/value"] == pytest.approx((first["completions/mean_length"] - 2) / 2, rel=1e-6)
        assert first[f"{prefix}/reward_penalty"] == pytest.approx(coef * first[f"{prefix}/value"], rel=1e-6)
    elif name == "lora_l2":
        initial = sum(float(p.float().square().sum()) for n, p in before.items() if "lora_" in n)
        assert first[f"{prefix}/value"] == pytest.approx(initial, rel=1e-5)
        assert first[f"{prefix}/loss"] == pytest.approx(coef * initial, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Effects: the entropy bonus raises entropy; KL in the reward shifts the advantages by coef · Σ KL
# ---------------------------------------------------------------------------------------------


def test_entropy_bonus_gives_higher_policy_entropy_than_no_bonus(tiny_model_dir, tmp_path):
    runs = {}
    for coef in (0.0, 5.0):
        recorder = Recorder()
        regularizers = [{"name": "entropy", "coef": coef}] if coef else None
        trainer, _ = _train(tiny_model_dir, tmp_path / str(coef), steps=4, recorder=recorder, regularizers=regularizers)
        runs[coef] = (trainer, recorder)
    (plain, plain_rec), (bonus, bonus_rec) = runs[0.0], runs[5.0]
    # Same seed and data: the first batch (sampled before any update) is the same in both runs.
    first = plain_rec.outputs[0]
    assert torch.equal(first["completion_ids"], bonus_rec.outputs[0]["completion_ids"])
    mask = first["completion_mask"]

    def entropy_on_first_batch(trainer):
        entropies = _logps_and_entropies(trainer, first)[1]
        return float((entropies * mask).sum() / mask.sum())

    initial = _history(plain, "entropy")[0]
    assert _history(bonus, "regularizers/entropy/value")[0] == pytest.approx(initial, rel=1e-6)
    plain_entropy, bonus_entropy = entropy_on_first_batch(plain), entropy_on_first_batch(bonus)
    assert bonus_entropy > plain_entropy + 0.05, (plain_entropy, bonus_entropy)
    assert bonus_entropy > initial + 0.05


KL_REWARD_COEF = 2.0


def test_kl_in_the_reward_shifts_advantages_by_coef_times_summed_kl(tiny_model_dir, tmp_path):
    recorder = Recorder()
    trainer, _ = _train(tiny_model_dir, tmp_path, steps=STEPS, recorder=recorder,
                        regularizers=[{"name": "kl", "kind": "k3", "placement": "reward", "coef": KL_REWARD_COEF}])
    group = trainer.num_generations
    penalties = _history(trainer, "regularizers/kl/reward_penalty")
    assert len(recorder.outputs) == len(recorder.rewards) == len(penalties) == STEPS
    shifts = []
    for batch, rewards, logged_penalty in zip(recorder.outputs, recorder.rewards, penalties):
        mask = batch["completion_mask"].double()
        log_ratio = batch["ref_per_token_logps"].double() - batch["policy_logps"].double()  # [N, T]
        summed_kl = ((torch.exp(log_ratio) - log_ratio - 1) * mask).sum(dim=1)  # [N]
        penalized = rewards.double() - KL_REWARD_COEF * summed_kl  # [N]
        grouped = penalized.view(-1, group)
        expected = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)  # TRL's grpo
        torch.testing.assert_close(batch["advantages"].double(), expected.view(-1), rtol=1e-4, atol=1e-4)
        assert logged_penalty == pytest.approx(float((KL_REWARD_COEF * summed_kl).mean()), rel=1e-4, abs=1e-7)
        plain = rewards.double().view(-1, group)
        plain_advantages = (plain - plain.mean(1, keepdim=True)) / (plain.std(1, keepdim=True) + 1e-4)
        shifts.append(float((batch["advantages"].double() - plain_advantages.view(-1)).abs().max()))
    assert penalties[0] == 0.0 and shifts[0] < 1e-4  # step 1: the fresh adapter is the reference, KL = 0
    assert max(shifts[1:]) > 0.05, shifts  # afterwards the penalty visibly moves the advantages


# ---------------------------------------------------------------------------------------------
# Scheduled coefficients are evaluated at the step that uses them
# ---------------------------------------------------------------------------------------------


def test_scheduled_coefficients_are_evaluated_at_each_step(tiny_model_dir, tmp_path):
    kl_schedule = grpo_custom.Schedule.linear(0.0, 0.9, 0, 3)
    length_schedule = grpo_custom.Schedule.piecewise([(0, 0.1), (2, 0.4)])
    calls = []

    def entropy_coef(step):
        calls.append(step)
        return 0.05 * step

    trainer, _ = _train(tiny_model_dir, tmp_path, steps=4, regularizers=[
        {"name": "kl", "kind": "k2", "coef": kl_schedule},
        {"name": "length", "target": 2, "coef": length_schedule},
        {"name": "entropy", "coef": entropy_coef},
    ])
    entries = [entry for entry in trainer.state.log_history if "regularizers/kl/coef" in entry]
    assert [entry["step"] for entry in entries] == [1, 2, 3, 4]
    for entry in entries:
        update = entry["step"] - 1  # the log entry of an update is stamped with the step count after it
        assert entry["regularizers/kl/coef"] == pytest.approx(kl_schedule(update), abs=1e-12)
        assert entry["regularizers/length/coef"] == length_schedule(update)
        assert entry["regularizers/entropy/coef"] == pytest.approx(0.05 * update, abs=1e-12)
        assert entry["regularizers/length/reward_penalty"] == pytest.approx(
            length_schedule(update) * entry["regularizers/length/value"], rel=1e-6)
    assert sorted(set(calls)) == [0, 1, 2, 3]
    assert entries[0]["regularizers/kl/loss"] == 0.0 and entries[0]["regularizers/entropy/loss"] == 0.0


def test_a_bad_coefficient_schedule_fails_naming_the_regularizer_and_step(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"'entropy': coef schedule returned -1.0 at step 1"):
        _train(tiny_model_dir, tmp_path, steps=2,
               regularizers=[{"name": "entropy", "coef": lambda step: -1.0 if step == 1 else 0.1}])


# ---------------------------------------------------------------------------------------------
# The reference without PEFT, and the importance ratio the trainer hands to the kl term
# ---------------------------------------------------------------------------------------------


def test_kl_without_peft_builds_a_frozen_reference_model_even_with_beta_zero(tiny_model_dir, tmp_path):
    from grpo_custom.testing.tiny_model import load_tiny_model

    torch.manual_seed(0)
    model, tokenizer = load_tiny_model(tiny_model_dir)
    initial = snapshot(model)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(
        str(tmp_path), max_steps=2, learning_rate=1e-3, beta=0.0, check_rewards="off",
        regularizers=[{"name": "kl", "kind": "k3", "coef": 0.1}],
    ))
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[letter_fraction_reward], args=args,
                                      train_dataset=length_dataset(16), processing_class=tokenizer)
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    trainer.train()
    reference = dict(trainer.ref_model.named_parameters())
    assert all(torch.equal(reference[name], initial[name]) for name in initial)  # the initial model, untouched
    assert changed_parameters(trainer.model, initial)[0]
    kl_values = _history(trainer, "regularizers/kl/value")
    assert kl_values[0] == 0.0 and kl_values[1] > 0.0


def test_kl_term_is_weighted_by_the_importance_ratio():
    from grpo_custom.algorithms.kl import kl_estimate
    from grpo_custom.algorithms.regularizers import RegularizerInputs

    torch.manual_seed(0)
    logps = (torch.randn(3, 5, dtype=torch.float64) - 2).requires_grad_()
    ref_logps, old_logps = logps.detach() + 0.3 * torch.randn(3, 5), logps.detach() - 0.2
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 4 + [0.0]], dtype=torch.float64)
    kl = grpo_custom.get_regularizer("kl")
    token_ratio = torch.exp(logps - old_logps)  # [B, T]
    sequence_ratio = torch.exp(((logps - old_logps) * mask).sum(-1) / mask.sum(-1)).unsqueeze(-1)  # [B, 1]
    for ratio in (token_ratio, sequence_ratio):
        inputs = RegularizerInputs(logps=logps, ref_logps=ref_logps, old_logps=old_logps, mask=mask,
                                   importance_ratio=ratio)
        term, metrics = kl(inputs, kind="k3")
        torch.testing.assert_close(term, kl_estimate(logps, ref_logps, "k3") * ratio)
        expected_value = float((term * mask).sum() / mask.sum())
        assert float(metrics["value"]) == pytest.approx(expected_value, rel=1e-12)
        # at the reward placement the penalty is the unweighted summed KL (no gradient flows there)
        penalty, _ = kl(inputs, kind="k3", placement="reward")
        torch.testing.assert_close(penalty, (kl_estimate(logps, ref_logps, "k3") * mask).sum(-1))
    # On-policy (old = current) the ratio is 1 but its gradient is not: d/dlogp of k3·r = 1 − e^Δ + k3.
    on_policy = torch.exp(logps - logps.detach())
    inputs = RegularizerInputs(logps=logps, ref_logps=ref_logps, mask=mask, importance_ratio=on_policy)
    (gradient,) = torch.autograd.grad(kl(inputs, kind="k3")[0].sum(), logps)
    delta = ref_logps - logps.detach()
    torch.testing.assert_close(gradient, 1 - torch.exp(delta) + (torch.exp(delta) - delta - 1))
    with pytest.raises(ValueError, match=r"importance_ratio must have shape \(3, 5\).*\(3, 1\).*got \(3, 4\)"):
        RegularizerInputs(logps=logps, ref_logps=ref_logps, mask=mask, importance_ratio=token_ratio[:, :4])
    with pytest.raises(ValueError, match="without a mask.*importance_ratio"):
        RegularizerInputs(mask=None, importance_ratio=token_ratio)
