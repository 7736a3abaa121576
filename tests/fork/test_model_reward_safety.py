"""Scores that reach TRL's reward tensor past the guard get the guard's classification and the ``reward_errors``
policy (issue 21, part 3): a plain ``nn.Module`` reward model's NaN/inf ``logits[:, 0]`` (TRL scores it itself), and a
finite value beyond float32's range (±inf in TRL's float32 tensor). Neither reaches TRL's advantages."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import grpo_custom
from grpo_custom.rewards.guard import BadRewardWarning, RewardFunctionError
from grpo_custom.testing.length_task import length_dataset
from tests.fork.test_trainer_tasks import record_batches
from tests.helpers import changed_parameters, cpu_training_kwargs, letter_fraction_reward, lora_model, snapshot
from tests.rewards.test_reward_model import build_tiny_classifier

N, G = 8, 4  # completions per generation batch: 2 prompts x G


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return build_tiny_classifier(tmp_path_factory.mktemp("model_rewards") / "rm")  # TRL names the reward "rm"


def _trainer(model_dir, classifier_dir, output_dir, bad_index: int, bad_value: float, **overrides):
    """letter_fraction_reward + the tiny classifier, whose score of sample ``bad_index`` is ``bad_value``.

    Returns the trainer, the policy and the list the classifier's raw scores ([N] per call) are appended to."""
    model, tokenizer = lora_model(model_dir)
    reward_model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    raw_scores = []

    def poison(module, inputs, output):  # what an fp16 overflow in the score head looks like to TRL
        raw_scores.append(output.logits[:, 0].detach().clone())
        output.logits[bad_index, 0] = bad_value
        return output

    reward_model.register_forward_hook(poison)
    options = dict(max_steps=1, per_device_train_batch_size=N, num_generations=G, check_rewards="off")
    options.update(overrides)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(output_dir), **options))
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[letter_fraction_reward, reward_model], args=args,
                                      train_dataset=length_dataset(16), processing_class=tokenizer)
    return trainer, model, raw_scores


def test_a_nan_score_of_a_reward_model_stops_training_naming_the_model_and_sample(tiny_model_dir, classifier_dir,
                                                                                   tmp_path):
    trainer, model, _ = _trainer(tiny_model_dir, classifier_dir, tmp_path, bad_index=5, bad_value=math.nan)
    assert trainer.reward_func_names == ["letter_fraction_reward", "rm"]
    before = snapshot(model)
    with pytest.raises(RewardFunctionError, match=r"Reward model 'rm' returned a non-finite score at sample index 5: "
                                                  r"nan \(its logits\[:, 0\]; 1 bad of 8 samples\)"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert changed_parameters(model, before) == (set(), set())


def test_nan_policy_leaves_an_inf_score_unscored_and_trains_on_the_rest(tiny_model_dir, classifier_dir, tmp_path):
    trainer, model, raw_scores = _trainer(tiny_model_dir, classifier_dir, tmp_path, bad_index=2, bad_value=math.inf,
                                          reward_errors="nan")
    before = snapshot(model)
    batches = record_batches(trainer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert trainer.state.global_step == 1 and changed_parameters(model, before)[0]
    messages = [str(w.message) for w in caught if issubclass(w.category, BadRewardWarning)]
    assert messages == ["Reward model 'rm': 1 reward(s) set to None (non_finite=1) at sample index(es) {2: inf}."]

    (batch,), (raw,) = batches, raw_scores
    raw = raw.to(torch.float64)
    scored = torch.ones(N, dtype=torch.bool)
    scored[2] = False
    logged = torch.tensor(batch["rewards"]["rm"], dtype=torch.float64)
    assert math.isnan(logged[2]) and torch.allclose(logged[scored], raw[scored], rtol=1e-6)
    entry = trainer.state.log_history[0]
    assert entry["reward_errors/rm/non_finite"] == 1.0
    assert entry["rewards/rm/mean"] == pytest.approx(raw[scored].mean().item(), rel=1e-5)
    assert entry["reward_health/rm/nan_rate"] == pytest.approx(1 / N)

    # TRL's GRPO advantages recomputed by hand: r = letters + rm (the unscored rm left out of sample 2's sum),
    # A = (r − mean_group) / (std_group + 1e-4), Bessel-corrected std
    letters = torch.tensor(letter_fraction_reward(batch["prompts"], batch["completions"]), dtype=torch.float64)
    rewards = (letters + torch.where(scored, raw, torch.zeros_like(raw))).view(-1, G)
    expected = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).view(-1)
    assert batch["advantages"] == pytest.approx(expected.tolist(), abs=1e-5)


def beyond_float32(prompts, completions, **kwargs):
    """The letter fraction, but 1e39 (finite as a Python float, inf in float32) at sample 3."""
    values = letter_fraction_reward(prompts, completions)
    values[3] = 1e39
    return values


@pytest.mark.parametrize("policy", ["raise", "nan"])
def test_a_value_beyond_float32_is_a_non_finite_sample_of_its_function(tiny_model_dir, tmp_path, policy):
    model, tokenizer = lora_model(tiny_model_dir)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(tmp_path), max_steps=1, per_device_train_batch_size=N,
                                                        num_generations=G, check_rewards="off", reward_errors=policy))
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[beyond_float32], args=args,
                                      train_dataset=length_dataset(16), processing_class=tokenizer)
    if policy == "raise":
        with pytest.raises(RewardFunctionError, match=r"Reward function 'beyond_float32' returned a non-finite score at "
                                                      r"sample index 3: inf \(a value beyond float32's range"):
            trainer.train()
        return
    batches = record_batches(trainer)
    with pytest.warns(BadRewardWarning, match=r"'beyond_float32': 1 reward\(s\) set to None \(non_finite=1\) at "
                                              r"sample index\(es\) \{3: inf\}"):
        trainer.train()
    (batch,) = batches
    expected = letter_fraction_reward(batch["prompts"], batch["completions"])
    logged = batch["rewards"]["beyond_float32"]
    assert math.isnan(logged[3]) and logged[:3] + logged[4:] == pytest.approx(expected[:3] + expected[4:], rel=1e-6)
    entry = trainer.state.log_history[0]
    assert entry["reward_errors/beyond_float32/non_finite"] == 1.0
    assert entry["rewards/beyond_float32/mean"] == pytest.approx(sum(expected[:3] + expected[4:]) / (N - 1), rel=1e-5)
    assert all(math.isfinite(a) for a in batch["advantages"])
