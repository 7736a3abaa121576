"""Tests of grpo_custom.rewards.reward_health.ConstancyEvidence: constancy judged on real batches, per function,
from the same per-group std the trainer logs (reward_health/<f>/frac_zero_std)."""
from __future__ import annotations

import math

import pytest
import torch

from grpo_custom.rewards.reward_health import (SPARSE_REWARD_ADVICE, ConstancyEvidence, constancy_warning,
                                              reward_health_metrics)
from tests.rewards import notebook_style_rewards as notebook
from tests.rewards.notebook_style_rewards import NOTEBOOK_REWARDS, REASONING_FORMAT, WORKING_FORMAT

nan = math.nan
G = 4


def feed(evidence: ConstancyEvidence, batch: torch.Tensor):
    """One update with the frac_zero_std the trainer logs for this batch."""
    frac_zero_std = reward_health_metrics(batch, torch.zeros(batch.shape[0]), G)[1].tolist()
    return evidence.update(batch, frac_zero_std, G)


def test_reward_health_metrics_count_inf_as_unscored():
    """The guard's classification first: an inf (a model reward, unguarded) is unscored, not a NaN std."""
    rewards = torch.tensor([[1.0], [2.0], [math.inf], [3.0], [5.0], [5.0], [5.0], [-math.inf]])
    nan_rate, frac_zero_std, _ = reward_health_metrics(rewards, torch.arange(8.0), G).tolist()
    assert nan_rate == [2 / 8]
    assert frac_zero_std == [0.5]  # group 0: {1, 2, 3} has spread; group 1: {5, 5, 5} has none


def test_findings_only_after_the_watched_batches_and_only_for_no_spread_anywhere():
    names = ["same", "prompt_only", "varies_once", "never", "routed_never"]
    evidence = ConstancyEvidence(names, batches=3, routed=["routed_never"])
    # per batch: 2 groups of 4; column 2 has spread only in the last batch
    batches = [
        torch.tensor([[0.5, 1.0, 0.0, nan, nan]] * 4 + [[0.5, 2.0, 0.0, nan, nan]] * 4),
        torch.tensor([[0.5, 3.0, 1.0, nan, nan]] * 4 + [[nan, nan, nan, nan, nan]] * 4),  # a group none scored
        torch.tensor([[0.5, 1.0, 0.0, nan, nan]] * 3 + [[0.5, 1.0, 1.0, nan, nan]] + [[0.5, 2.0, 0.0, nan, nan]] * 4),
    ]
    assert feed(evidence, batches[0]) == [] and feed(evidence, batches[1]) == []
    findings = feed(evidence, batches[2])
    assert evidence.done and feed(evidence, batches[0]) == []  # judged once
    assert [(f.name, f.kind, f.batches, f.groups) for f in findings] == [
        ("same", "same_value", 3, 5), ("prompt_only", "prompt_only", 3, 5), ("never", "never_scored", 3, 0)]
    same, prompt_only, never = findings
    assert (same.low, same.high) == (0.5, 0.5) and (prompt_only.low, prompt_only.high) == (1.0, 3.0)
    assert same.message.startswith("reward function 'same' returned 0.5 for every completion it scored in the first "
                                   "3 generation batches (5 groups, frac_zero_std 1 in each)")
    assert "values 1 to 3 across groups" in prompt_only.message and "depends on the prompt" in prompt_only.message
    assert math.isnan(never.low) and "scored no completion" in never.message


def test_one_group_with_spread_in_any_batch_clears_a_function():
    evidence = ConstancyEvidence(["r"], batches=2)
    feed(evidence, torch.tensor([[0.0]] * 8))
    assert feed(evidence, torch.tensor([[0.0]] * 7 + [[1.0]])) == []


def test_notebook_style_rewards_on_a_batch_with_some_formatted_completions_are_not_constant():
    """The notebooks' rewards give spread as soon as some completions of a group follow the format."""
    texts = [REASONING_FORMAT.format(reasoning="6*7", answer="42"), "forty two", WORKING_FORMAT.format(reasoning="6*7",
             answer="42"), "<reasoning>\nhalf\n</reasoning>"] * 2
    prompt = [{"role": "user", "content": "What is 6 times 7?"}]
    before = notebook.CALLS_SEEN
    columns = [notebook_reward(prompts=[prompt] * 8, completions=[[{"role": "assistant", "content": t}] for t in texts],
                               answer=["42"] * 8) for notebook_reward in NOTEBOOK_REWARDS]
    notebook.CALLS_SEEN = before
    batch = torch.tensor(columns, dtype=torch.float64).T  # [8, F]
    evidence = ConstancyEvidence([r.__name__ for r in NOTEBOOK_REWARDS], batches=1)
    assert feed(evidence, batch) == []
    # the same rewards on unformatted text only: every one is flat, and said so with its value
    flat = torch.tensor([[0.0] * len(NOTEBOOK_REWARDS)] * 8)
    findings = feed(ConstancyEvidence([r.__name__ for r in NOTEBOOK_REWARDS], batches=1), flat)
    assert [f.kind for f in findings] == ["same_value"] * len(NOTEBOOK_REWARDS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batches must be an int >= 1"):
        ConstancyEvidence(["r"], batches=0)
    with pytest.raises(ValueError, match=r"expected \[N, 2\] \(one column per reward function \['a', 'b'\]\)"):
        ConstancyEvidence(["a", "b"]).update(torch.zeros(8, 3), [1.0, 1.0, 1.0], G)


def test_the_warning_shares_one_sentence_among_functions_flat_at_the_same_value():
    evidence = ConstancyEvidence(["strict", "soft", "half", "per_prompt"], batches=1)
    findings = feed(evidence, torch.tensor([[0.0, 0.0, 0.5, 1.0]] * 4 + [[0.0, 0.0, 0.5, 2.0]] * 4))
    text = constancy_warning(findings)
    parts = text.split("\n")  # one short line per finding, the advice once (issue 21: not one 1,500-character line)
    assert len(parts) == 4
    assert parts[0] == ("reward functions 'strict', 'soft' returned 0 for every completion they scored in the "
                        "first 1 generation batches (2 groups, frac_zero_std 1 in each): their advantages are "
                        "zero, they have given no learning signal so far.")
    assert parts[1].startswith("reward function 'half' returned 0.5 for every completion it scored")
    assert parts[2] == findings[3].message and "depends on the prompt" in parts[2]
    assert parts[3] == SPARSE_REWARD_ADVICE and text.count(SPARSE_REWARD_ADVICE) == 1
    assert max(len(part) for part in parts) < 300 and " | " not in text


def test_the_warning_during_training_clears_the_progress_bar(capsys):
    """Printed while the trainer's tqdm bar is on screen, the warning starts on a line of its own (tqdm.write),
    not after the bar's text; the bar is drawn again after it."""
    import logging
    import sys

    from tqdm import tqdm

    from grpo_custom.fork.hooks.rewards import warn_above_progress_bars

    log = logging.getLogger("grpo_custom.test_progress_bar")
    handler = logging.StreamHandler(sys.stderr)  # a console handler, as Unsloth's / a notebook's logging setup has
    handler.setFormatter(logging.Formatter("[%(name)s|%(levelname)s]%(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        bar = tqdm(total=4, file=sys.stderr, mininterval=0, ascii=True)
        bar.update(1)
        warn_above_progress_bars(log, "Reward check on the model's completions: line one\nline two")
        bar.update(1)
        bar.close()
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    start = err.index("[grpo_custom.test_progress_bar|WARNING]Reward check")
    assert err[start - 1] in "\r\n", repr(err[max(0, start - 40):start + 10])  # not glued to the bar's "it/s]"
    assert "line two\n" in err and "2/4" in err[start:]  # the bar redrawn after the message
