"""Reward safety inside tiny-model training runs: bad reward outputs, the start-up check, reward-health metrics."""
from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch

import grpo_custom
from grpo_custom.rewards.direction_check import reward_length_correlation
from grpo_custom.rewards.guard import BadRewardWarning, RewardFunctionError
from grpo_custom.testing.length_task import length_dataset
from tests.fork.test_trainer_tasks import record_batches
from tests.helpers import changed_parameters, cpu_training_kwargs, letter_fraction_reward, lora_model, snapshot

N = 8  # completions per generation batch: 2 prompts x G = 4


def raising(prompts, completions, **kwargs):
    """A judge that is down."""
    raise RuntimeError("judge down")


def short_output(prompts, completions, **kwargs):
    """One value too few."""
    return letter_fraction_reward(prompts, completions)[:-1]


def non_number(prompts, completions, **kwargs):
    """The letter fraction, but a string at index 1."""
    values = letter_fraction_reward(prompts, completions)
    values[1] = "oops"
    return values


def non_finite(prompts, completions, **kwargs):
    """The letter fraction, but +inf at index 2 and -inf at index 3."""
    values = letter_fraction_reward(prompts, completions)
    values[2], values[3] = math.inf, -math.inf
    return values


def negative_inf(prompts, completions, **kwargs):
    """The letter fraction, but -inf at index 0."""
    values = letter_fraction_reward(prompts, completions)
    values[0] = -math.inf
    return values


def huge_int(prompts, completions, **kwargs):
    """The letter fraction, but the int 10**400 (beyond float range) at indices 1 and 5 (issue 21's example)."""
    values = letter_fraction_reward(prompts, completions)
    values[1] = values[5] = 10**400
    return values


def distance_reward(prompts, completions, **kwargs):
    """The classic sign bug: a distance to 20 characters used as a reward (GRPO maximizes it)."""
    return [abs(20 - len(c)) for c in completions]


def closeness_reward(prompts, completions, **kwargs):
    """The correct sign: minus the distance to 20 characters."""
    return [-abs(20 - len(c)) for c in completions]


def _trainer(model_dir, output_dir, reward_funcs, **overrides):
    model, tokenizer = lora_model(model_dir)
    options = dict(max_steps=2, per_device_train_batch_size=N, check_rewards="off")
    options.update(overrides)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(output_dir), **options))
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                                      train_dataset=length_dataset(16), processing_class=tokenizer)
    return trainer, model


def _logged_steps(trainer):
    return [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize(
    "reward, message",
    [
        (raising, r"Reward function 'raising' raised RuntimeError: judge down"),
        (short_output, rf"Reward function 'short_output' returned {N - 1} values for {N} completions"),
        (non_number, r"Reward function 'non_number' returned a non-number at sample index 1: str 'oops'"),
        (non_finite, r"Reward function 'non_finite' returned a non-finite value at sample index 2: float inf"),
        (negative_inf, r"Reward function 'negative_inf' returned a non-finite value at sample index 0: float -inf"),
    ],
)
def test_bad_reward_output_stops_training_naming_function_index_and_value(reward, message, tiny_model_dir,
                                                                           tmp_path):
    trainer, model = _trainer(tiny_model_dir, tmp_path, [letter_fraction_reward, reward])
    before = snapshot(model)
    with pytest.raises(RewardFunctionError, match=message):
        trainer.train()
    assert trainer.state.global_step == 0
    assert changed_parameters(model, before) == (set(), set())


@pytest.fixture(scope="module")
def nan_policy_run(tiny_model_dir, tmp_path_factory):
    trainer, model = _trainer(tiny_model_dir, tmp_path_factory.mktemp("nan_policy"),
                              [letter_fraction_reward, raising, short_output, non_number, non_finite, huge_int],
                              reward_errors="nan", check_rewards="warn", max_steps=3,  # lengths vary at step 3
                              reward_weights=[1.0] * 5 + [0.0])  # huge_int scored and checked, not trained on
    before = snapshot(model)
    batches = record_batches(trainer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = _train_capturing_warnings(trainer)
    bad_reward_warnings = [str(w.message) for w in caught if issubclass(w.category, BadRewardWarning)]
    return trainer, changed_parameters(model, before), batches, bad_reward_warnings, records


def test_nan_policy_trains_to_the_end_and_updates_lora(nan_policy_run):
    trainer, (trainable, frozen), batches, _, _ = nan_policy_run
    assert trainer.state.global_step == 3 and len(batches) == 3
    assert trainable and not frozen
    for batch in batches:
        assert all(math.isfinite(a) for a in batch["advantages"])


def test_nan_policy_sets_only_the_bad_values_to_nan(nan_policy_run):
    _, _, batches, _, _ = nan_policy_run
    for batch in batches:
        expected = letter_fraction_reward(batch["prompts"], batch["completions"])  # recomputed from the table
        rewards = batch["rewards"]
        assert len(batch["completions"]) == N
        assert rewards["letter_fraction_reward"] == pytest.approx(expected, rel=1e-6)
        assert all(math.isnan(v) for v in rewards["raising"])
        assert all(math.isnan(v) for v in rewards["short_output"])
        for name, bad_indices in (("non_number", {1}), ("non_finite", {2, 3}), ("huge_int", {1, 5})):
            for index, value in enumerate(rewards[name]):
                if index in bad_indices:
                    assert math.isnan(value), (name, index)
                else:
                    assert value == pytest.approx(expected[index], rel=1e-6), (name, index)


def test_nan_policy_logs_counts_as_metrics_and_warnings(nan_policy_run):
    trainer, _, _, bad_reward_warnings, _ = nan_policy_run
    expected_counts = {
        "reward_errors/raising/exception": N,
        "reward_errors/short_output/wrong_length": N,
        "reward_errors/non_number/non_number": 1,
        "reward_errors/non_finite/non_finite": 2,
        "reward_errors/huge_int/non_finite": 2,
    }
    steps = _logged_steps(trainer)
    assert len(steps) == 3
    for entry in steps:
        for key, count in expected_counts.items():
            assert entry[key] == count, key
        assert entry["reward_errors/non_number/non_finite"] == 0
        assert not any(key.startswith("reward_errors/letter_fraction_reward/") and entry[key] for key in entry)
    per_step = [
        f"'raising': {N} reward(s) set to None (exception={N})",
        f"'short_output': {N} reward(s) set to None (wrong_length={N})",
        "'non_number': 1 reward(s) set to None (non_number=1)",
        "'non_finite': 2 reward(s) set to None (non_finite=2)",
        "'huge_int': 2 reward(s) set to None (non_finite=2)",
    ]
    for fragment in per_step:
        assert sum(fragment in message for message in bad_reward_warnings) == 3, fragment


def test_an_int_beyond_float_range_is_reported_at_start_and_trains_as_none(nan_policy_run):
    """Issue 21: 10**400 under reward_errors="nan" crashed at start-up with a bare OverflowError in the probe.
    A correct run: the start-up check reports it (one warning, naming the value), training runs to the end with
    those two rewards unscored (NaN, counted as non_finite: the two tests above)."""
    trainer, _, _, _, records = nan_policy_run
    assert trainer.state.global_step == 3
    start_up = [r.getMessage() for r in records if r.getMessage().startswith("Reward check failed")]
    assert len(start_up) == 1
    huge = [part for part in start_up[0].split(" | ") if part.startswith("reward function 'huge_int'")]
    assert len(huge) == 1
    assert "'huge_int' returned NaN/inf or a number beyond float range (" in huge[0]
    assert repr(10**400)[:40] + "..." in huge[0]
    assert "(probed with 26 kinds of synthetic completion x 4 samples, in one call: lengths 0, 2, 10, 20" in huge[0]


def test_reward_health_metrics_match_the_logged_rewards(nan_policy_run):
    trainer, _, batches, _, _ = nan_policy_run
    for entry, batch in zip(_logged_steps(trainer), batches):
        lengths = batch["lengths"]
        for name, column in batch["rewards"].items():
            prefix = f"reward_health/{name}/"
            assert entry[prefix + "nan_rate"] == pytest.approx(sum(math.isnan(v) for v in column) / N)
            groups = [column[start:start + 4] for start in range(0, N, 4)]
            scored = [[v for v in group if not math.isnan(v)] for group in groups]
            scored = [group for group in scored if group]
            if scored:
                zero_std = [len(group) < 2 or torch.tensor(group).std().item() < 1e-8 for group in scored]
                assert entry[prefix + "frac_zero_std"] == pytest.approx(sum(zero_std) / len(scored))
            else:
                assert prefix + "frac_zero_std" not in entry
            correlation = reward_length_correlation(column, lengths)
            if math.isnan(correlation):
                assert prefix + "length_corr" not in entry  # skipped, not logged as NaN
            else:
                assert entry[prefix + "length_corr"] == pytest.approx(correlation, rel=1e-5)
    steps = _logged_steps(trainer)
    assert any(len(set(batch["lengths"])) > 1 for batch in batches)  # the correlation was defined at least once
    assert any("reward_health/letter_fraction_reward/length_corr" in entry for entry in steps)
    # a function that scored nothing: NaN rate 1, no zero-std fraction, no correlation
    assert all(entry["reward_health/raising/nan_rate"] == 1.0 for entry in steps)
    assert all("reward_health/raising/length_corr" not in entry for entry in steps)


@pytest.fixture(scope="module")
def checked_good_run(tiny_model_dir, tmp_path_factory):
    trainer, model = _trainer(tiny_model_dir, tmp_path_factory.mktemp("checked_good"),
                              [letter_fraction_reward, closeness_reward], check_rewards="error", max_steps=1)
    records = _train_capturing_warnings(trainer)
    return trainer, records


def _train_capturing_warnings(trainer) -> list[logging.LogRecord]:
    """Train; returns the reward hooks' warnings, each with ``step``: the global step when it was logged."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)

    def emit(record):
        record.step = trainer.state.global_step
        records.append(record)

    handler.emit = emit
    hooks_logger = logging.getLogger("grpo_custom.fork.hooks.rewards")
    hooks_logger.addHandler(handler)
    try:
        trainer.train()
    finally:
        hooks_logger.removeHandler(handler)
    return records


def test_good_rewards_pass_the_check_silently(checked_good_run):
    trainer, records = checked_good_run
    assert trainer.grpo_custom.rewards_checked
    assert trainer.state.global_step == 1
    assert records == []


def test_check_rewards_error_stops_a_distance_reward_at_start(tiny_model_dir, tmp_path):
    trainer, model = _trainer(tiny_model_dir, tmp_path, [letter_fraction_reward, distance_reward],
                              check_rewards="error")
    before = snapshot(model)
    message = (r"Reward check failed \(check_rewards='error'\): reward function 'distance_reward': "
               r"'distance_reward' prefers completions far from the target length 20 chars")
    with pytest.raises(ValueError, match=message) as error:
        trainer.train()
    assert "letter_fraction_reward" not in str(error.value)
    assert "GRPO maximizes reward" in str(error.value)
    assert trainer.state.global_step == 0
    assert changed_parameters(model, before) == (set(), set())


def test_check_rewards_warn_logs_once_and_trains(tiny_model_dir, tmp_path):
    trainer, model = _trainer(tiny_model_dir, tmp_path, [letter_fraction_reward, distance_reward],
                              check_rewards="warn")
    before = snapshot(model)
    records = _train_capturing_warnings(trainer)
    assert trainer.state.global_step == 2
    assert changed_parameters(model, before)[0]
    assert len(records) == 1  # checked at the first batch only
    message = records[0].getMessage()
    assert message.startswith("Reward check failed (check_rewards='warn'): reward function 'distance_reward'")
    assert "letter_fraction_reward" not in message


def test_check_rewards_off_does_not_probe(tiny_model_dir, tmp_path):
    calls = []

    def counting(prompts, completions, **kwargs):
        calls.append(len(completions))
        return distance_reward(prompts, completions)

    trainer, _ = _trainer(tiny_model_dir, tmp_path, [counting], check_rewards="off", max_steps=1)
    records = _train_capturing_warnings(trainer)
    assert calls == [N] and records == []


def constant_half(prompts, completions, **kwargs):
    """A reward that never looks at the completion: 0.5 for every one (no learning signal, ever)."""
    return [0.5] * len(completions)


def test_a_constant_reward_is_reported_from_the_first_batches_of_real_completions(tiny_model_dir, tmp_path):
    from grpo_custom.rewards.reward_health import EVIDENCE_BATCHES

    trainer, _ = _trainer(tiny_model_dir, tmp_path, [letter_fraction_reward, constant_half], check_rewards="warn",
                          max_steps=EVIDENCE_BATCHES + 1)
    records = _train_capturing_warnings(trainer)
    # nothing at start-up (the probes only note it), one warning at the 4th generation batch, none after
    assert [record.step for record in records] == [EVIDENCE_BATCHES - 1]
    assert records[0].getMessage().startswith(
        "Reward check on the model's completions: reward function 'constant_half' returned 0.5 for every completion "
        f"it scored in the first {EVIDENCE_BATCHES} generation batches ({2 * EVIDENCE_BATCHES} groups, frac_zero_std "
        "1 in each): its advantages are zero")
    assert "letter_fraction_reward" not in records[0].getMessage()
    steps = _logged_steps(trainer)[:EVIDENCE_BATCHES]  # the evidence is what the trainer logged
    assert all(entry["reward_health/constant_half/frac_zero_std"] == 1.0 for entry in steps)
    assert all(entry["reward_health/letter_fraction_reward/frac_zero_std"] < 1.0 for entry in steps)


def test_notebook_style_rewards_train_without_false_alarm_or_probe_output(tiny_model_dir, tmp_path, capsys):
    """Rewards of the Unsloth notebooks' kinds, conversational prompts and an ``answer`` column: the start-up check
    reports only the inverted length reward beside them, and the probe call's prints are not shown."""
    from datasets import Dataset

    from tests.rewards import notebook_style_rewards as notebook

    def conversational_distance(completions, **kwargs):
        """A distance to 20 characters used as a reward (the inverted length reward)."""
        return [abs(20 - len(c[0]["content"])) for c in completions]

    system = {"role": "system", "content": "Answer as <reasoning>...</reasoning><answer>...</answer>."}
    rows = [(a, b) for a in range(2, 6) for b in range(3, 5)]
    dataset = Dataset.from_dict({"prompt": [[system, {"role": "user", "content": f"What is {a} plus {b}?"}]
                                            for a, b in rows], "answer": [str(a + b) for a, b in rows]})
    model, tokenizer = lora_model(tiny_model_dir)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(tmp_path), max_steps=1, per_device_train_batch_size=N,
                                                        check_rewards="warn"))
    trainer = grpo_custom.GRPOTrainer(model=model, reward_funcs=[*notebook.NOTEBOOK_REWARDS, conversational_distance],
                                      args=args, train_dataset=dataset, processing_class=tokenizer)
    notebook.CALLS_SEEN = 0
    capsys.readouterr()
    records = _train_capturing_warnings(trainer)
    assert trainer.state.global_step == 1
    assert len(records) == 1 and records[0].getMessage().startswith(
        "Reward check failed (check_rewards='warn'): reward function 'conversational_distance': "
        "'conversational_distance' prefers completions far from the target length")
    assert not any(reward.__name__ in records[0].getMessage() for reward in notebook.NOTEBOOK_REWARDS)
    printed = capsys.readouterr().out
    assert printed.count("-" * 20 + " Question:") == 1  # answer_correctness: the training call, not the probe call
    assert "*" * 20 not in printed  # number_check printed at its call 0, the probe call (captured); call 1 is silent
    assert notebook.CALLS_SEEN == 2  # module-level state does see the probe call (docs/reward_checks.md)
