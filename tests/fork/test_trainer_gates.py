"""Curriculum gates end to end on the plain TRL path (issue 23): the step a gate opens, the weights from then on,
resume inside a patience window, errors, and what is logged, printed and written.

The gated metric is deterministic: ``progress`` scores every completion ``trainer_state.global_step``, so the
evaluation at optimizer step N logs ``eval_rewards/progress/mean == N`` exactly, and a threshold T with evaluations
every 2 steps predicts the opening step by hand.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from transformers import TrainerCallback

import grpo_custom
from grpo_custom import Gate, RewardSchedule, Schedule, Stage
from grpo_custom.testing.length_task import length_dataset
from tests.helpers import cpu_training_kwargs, letter_fraction_reward, lora_model

METRIC = "eval_rewards/progress/mean"
STEPS = 10


def progress(prompts, completions, trainer_state=None, **kwargs):
    """The optimizer step at scoring time, for every completion (the evaluation at step N logs N)."""
    return [float(trainer_state.global_step)] * len(completions)


class Recorder:
    """``letter_fraction_reward`` under its own name, keeping what it returned, call by call, with the step."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, **kwargs):
        values = letter_fraction_reward(prompts, completions)
        self.calls.append((kwargs["step"], values))
        return values

    def training_batches(self) -> dict:
        """Step → scores of the training batch generated there: the evaluation at step N runs before the batch
        generated at N, so the last call of each step is the training batch."""
        batches = {}
        for step, values in self.calls:
            batches[step] = values
        return batches


def _schedule(start, transition=2):
    return RewardSchedule([
        Stage(0, {"progress": 1.0, "letters": 0.0}, name="warm"),
        Stage(start, {"progress": 0.0, "letters": 1.0}, blend="linear", transition=transition, name="strict"),
    ])


def _trainer(model_dir, output_dir, schedule, *, steps=STEPS, letters=None, eval_dataset=True, **overrides):
    model, tokenizer = lora_model(model_dir)
    letters = letters or Recorder()
    letters.__name__ = "letters"
    kwargs = dict(max_steps=steps, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4,
                  check_rewards="off", reward_schedule=schedule)
    args = grpo_custom.GRPOConfig(**cpu_training_kwargs(str(output_dir), **{**kwargs, **overrides}))
    return grpo_custom.GRPOTrainer(model=model, reward_funcs=[progress, letters], args=args,
                                   train_dataset=length_dataset(16),
                                   eval_dataset=length_dataset(4) if eval_dataset else None, processing_class=tokenizer)


def _train_entries(trainer):
    return {entry["step"]: entry for entry in trainer.state.log_history if "schedule/stage" in entry}


def _assert_opened_at(trainer, schedule, opened):
    """Every logged batch has the weights and stage of the same schedule with ``Stage(start=opened)``."""
    fixed = _schedule(opened)
    entries = _train_entries(trainer)
    assert sorted(entries) == list(range(1, STEPS + 1))
    assert trainer.grpo_custom.curriculum.starts() == {"strict": opened}
    for step, entry in entries.items():
        generated = step - 1  # the batch of log step s is generated at global_step s − 1
        weights = fixed.weights_at(generated)
        assert entry["schedule/weight/letters"] == pytest.approx(weights["letters"]), step
        assert entry["schedule/weight/progress"] == pytest.approx(weights["progress"]), step
        assert entry["schedule/stage"] == (1 if generated >= opened else 0), step
        assert entry["schedule/gate/strict/open"] == float(generated >= opened), step
    assert schedule.weights_at(opened + 1, opened={"strict": opened}) == fixed.weights_at(opened + 1)


# evaluations at 2, 4, 6, 8, 10 log 2, 4, 6, 8, 10
@pytest.mark.parametrize("gate, opened", [
    (Gate(METRIC, ">=", 3.0), 4),                         # first hit at 4
    (Gate(METRIC, ">=", 3.0, patience=2), 6),             # hits at 4 and 6
    (Gate(METRIC, ">", 1.0, min_step=7), 8),              # holds from 2 on, never before step 7
    (Gate(METRIC, ">=", 1e9, max_step=5), 5),             # never holds: max_step
], ids=["patience1", "patience2", "min_step", "max_step"])
def test_gate_opens_at_the_predicted_step_and_weights_follow(tiny_model_dir, tmp_path, gate, opened):
    schedule = _schedule(gate)
    trainer = _trainer(tiny_model_dir, tmp_path, schedule)
    trainer.train()
    _assert_opened_at(trainer, schedule, opened)
    state = trainer.grpo_custom.curriculum.gates["strict"]
    assert state.reason == ("max_step" if gate.max_step == opened else "condition")


def test_callable_gate_and_printed_line(tiny_model_dir, tmp_path, capsys):
    seen = []

    def past_five(metrics):
        seen.append(metrics[METRIC])
        return metrics[METRIC] > 5

    schedule = _schedule(past_five)
    trainer = _trainer(tiny_model_dir, tmp_path, schedule)
    trainer.train()
    _assert_opened_at(trainer, schedule, 6)
    assert seen == [2.0, 4.0, 6.0]  # watched until it opened, then no longer asked
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[grpo-custom] step")]
    assert lines == ["[grpo-custom] step 6: reward stage 1 'strict' starts: past_five(metrics) held at 1 "
                     "consecutive evaluation(s); value 1"]


@pytest.fixture(scope="module")
def patience_runs(tiny_model_dir, tmp_path_factory):
    """An uninterrupted run (patience 2: hits at 4 and 6) saving at step 5, and a run resumed from checkpoint-5."""
    gate = Gate(METRIC, ">=", 3.0, patience=2)
    output = tmp_path_factory.mktemp("uninterrupted")
    full = _trainer(tiny_model_dir, output, _schedule(gate), save_strategy="steps", save_steps=5)
    full.train()
    checkpoint = os.path.join(output, "checkpoint-5")
    resumed = _trainer(tiny_model_dir, tmp_path_factory.mktemp("resumed"), _schedule(gate))
    resumed.train(resume_from_checkpoint=checkpoint)
    return full, resumed, checkpoint


def test_resume_inside_a_patience_window_opens_at_the_same_step(patience_runs):
    full, resumed, checkpoint = patience_runs
    with open(os.path.join(checkpoint, "grpo_custom_state.json")) as handle:
        saved = json.load(handle)["curriculum"]["gates"]["strict"]
    assert (saved["hits"], saved["opened_at"]) == (1, None)  # one hit (at 4) carried over the checkpoint
    assert full.grpo_custom.curriculum.starts() == resumed.grpo_custom.curriculum.starts() == {"strict": 6}
    full_entries, resumed_entries = _train_entries(full), _train_entries(resumed)
    assert sorted(resumed_entries) == list(range(1, STEPS + 1))  # steps 1..5 come from the checkpoint's state
    for step in range(6, STEPS + 1):  # trained after the resume; without the saved hit the gate would open at 8
        entry = resumed_entries[step]
        for key in ("schedule/stage", "schedule/weight/letters", "schedule/gate/strict/hits", "schedule/gate/strict/open"):
            assert entry[key] == full_entries[step][key], (step, key)


def test_resume_with_a_changed_gate_is_refused_by_stage_name(patience_runs, tiny_model_dir, tmp_path):
    _, _, checkpoint = patience_runs
    trainer = _trainer(tiny_model_dir, tmp_path, _schedule(Gate(METRIC, ">=", 4.0, patience=2)))
    with pytest.raises(ValueError, match=r"changed curriculum gates: stage 'strict': Gate\('eval_rewards/progress/mean', "
                                         r"'>=', 3.0, patience=2\) in the checkpoint, Gate\(.*4.0, patience=2\) now"):
        trainer.train(resume_from_checkpoint=checkpoint)


def test_gated_schedule_needs_an_evaluation(tiny_model_dir, tmp_path):
    schedule = _schedule(Gate(METRIC, ">=", 3.0))
    with pytest.raises(ValueError, match=r"never evaluates: pass eval_dataset=\.\.\. to the trainer and set "
                                         r"eval_strategy='steps'"):
        _trainer(tiny_model_dir, tmp_path, schedule, eval_dataset=False, eval_strategy="no")
    with pytest.raises(ValueError, match=r"set eval_strategy='steps' \(with eval_steps=N\) or 'epoch'"):
        _trainer(tiny_model_dir, tmp_path, schedule, eval_strategy="no")


def test_unknown_metric_key_names_the_logged_keys(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, _schedule(Gate("eval_rewards/progres/mean", ">=", 3.0)), steps=2)
    with pytest.raises(KeyError, match=r"no metric 'eval_rewards/progres/mean'\. Logged keys: .*eval_reward, .*"
                                       r"eval_rewards/progress/mean"):
        trainer.train()


def test_quantiles_stage_summaries_histograms_and_a_stage_relative_coefficient(tiny_model_dir, tmp_path):
    """Gate opens at 4 (patience 1). Checks q10/q50/q90 against numpy, the two stage summaries against the recorded
    scores, one histogram per function and batch, and a KL coefficient warming up over 4 steps from the gate."""
    letters = Recorder()
    kl = Schedule.after_stage("strict", Schedule.linear(0.0, 0.2, 0, 4))
    trainer = _trainer(tiny_model_dir, tmp_path, _schedule(Gate(METRIC, ">=", 3.0)), letters=letters,
                       regularizers=[{"name": "kl", "coef": kl}])

    class FakeWriter:  # stands in for TensorBoardCallback.tb_writer (tensorboard is not a dependency)
        calls = []

        def add_histogram(self, tag, values, step):
            self.calls.append((tag, list(values), step))

    class FakeTensorBoard(TrainerCallback):
        tb_writer = FakeWriter()

    trainer.add_callback(FakeTensorBoard())
    trainer.train()
    entries = _train_entries(trainer)
    batches = letters.training_batches()
    for step, entry in entries.items():
        values = np.array(batches[step - 1])
        for key, p in (("q10", 0.1), ("q50", 0.5), ("q90", 0.9)):
            assert entry[f"rewards/letters/{key}"] == pytest.approx(np.quantile(values, p), rel=1e-6), (step, key)
            assert entry[f"rewards/progress/{key}"] == pytest.approx(step - 1)
        coef = 0.0 if step - 1 < 4 else min(0.2 * (step - 1 - 4) / 4, 0.2)
        assert entry["regularizers/kl/coef"] == pytest.approx(coef), step
    folder = tmp_path / "reward_stages"
    assert sorted(os.listdir(folder)) == ["0-warm.json", "1-strict.json"]
    warm, strict = (json.loads((folder / name).read_text()) for name in ("0-warm.json", "1-strict.json"))
    assert (warm["start"], warm["end"], warm["ended"], warm["batches"]) == (0, 4, True, 4)
    assert (strict["start"], strict["end"], strict["ended"], strict["batches"]) == (4, None, False, 6)
    for summary, steps in ((warm, range(0, 4)), (strict, range(4, STEPS))):
        scores = np.concatenate([batches[step] for step in steps])
        got = summary["reward_functions"]["letters"]
        assert got["count"] == len(scores) == 4 * len(steps)
        assert got["mean"] == pytest.approx(scores.mean(), rel=1e-6)
        assert got["q50"] == pytest.approx(np.quantile(scores, 0.5), rel=1e-6)
        assert summary["reward_functions"]["progress"]["max"] == steps[-1]
    tags = [(tag, step) for tag, _, step in FakeWriter.calls]
    assert tags == [(f"train/rewards/{name}", step) for step in range(1, STEPS + 1) for name in ("progress", "letters")]

