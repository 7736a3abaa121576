"""The start-up probes with reward functions of the kinds Unsloth's GRPO notebooks use: no false alarm, the
inverted length finding kept, what was probed said, the probe call's output captured, a huge int classified."""
from __future__ import annotations

import pytest

from grpo_custom.rewards.direction_check import check_reward
from tests.rewards import notebook_style_rewards as notebook
from tests.rewards.notebook_style_rewards import NOTEBOOK_REWARDS, REASONING_FORMAT, WORKING_FORMAT

SYSTEM = "Respond in the format <reasoning>...</reasoning><answer>...</answer>."
PROMPTS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 6 times 7?"}],
           [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 10 plus 5?"}]]
COLUMNS = {"answer": ["42", "15"]}


def _message(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _score(reward, texts: list[str]) -> list[float]:
    prompts = [PROMPTS[0]] * len(texts)
    return reward(prompts=prompts, completions=[_message(t) for t in texts], answer=["42"] * len(texts))


@pytest.mark.parametrize("reward", NOTEBOOK_REWARDS, ids=[r.__name__ for r in NOTEBOOK_REWARDS])
def test_notebook_style_rewards_raise_no_alarm(reward, capsys):
    # The reward does vary on completions in its format: a constant reading on the probes would be a false alarm.
    formatted = [REASONING_FORMAT.format(reasoning="6*7", answer="42"), WORKING_FORMAT.format(reasoning="6*7", answer="42")]
    assert len(set(_score(reward, formatted + ["no format at all"]))) > 1
    capsys.readouterr()  # what the direct call above printed
    report = check_reward(reward, prompts=PROMPTS, columns=COLUMNS)
    assert report.ok and report.problems == [], str(report)
    assert report.direction == "unchecked"  # none of them depends on length: nothing to judge, never "ok"
    assert capsys.readouterr() == ("", "")  # printing rewards print into the report, not to the user


def test_probes_missing_the_format_leave_a_note_and_say_what_was_probed():
    report = check_reward(notebook.strict_xml_format, prompts=PROMPTS, columns=COLUMNS)
    # every probe misses the strict layout: the old rule called this "no learning signal"
    assert {value for value in report.rewards.values()} == {0.0}
    assert report.ok and len(report.notes) == 1 and "returned 0 for every probe" in report.notes[0]
    assert report.probed.startswith("27 kinds of synthetic completion x 4 samples, in one call: lengths 0, 2, 10, "
                                    "20, 40, 220 chars around target 20; lengths 0, 1, 2, 4, ..., 16384 chars")
    assert "'The answer is <row's answer>'" in report.probed
    assert f"probed: {report.probed}" in str(report)


def test_inverted_length_reward_is_still_reported_beside_notebook_rewards():
    def length_distance(completions, **kwargs):
        """A distance to 200 characters used as a reward (GRPO maximizes it: trains away from 200)."""
        return [abs(200 - len(c[0]["content"])) for c in completions]

    report = check_reward(length_distance, prompts=PROMPTS, columns=COLUMNS)
    assert not report.ok and report.direction == "wrong"
    assert len(report.problems) == 1 and "prefers completions far from the target length" in report.problems[0]
    assert "lowest at 256 chars" in report.problems[0]  # the scale probe nearest 200


def test_probe_output_and_warnings_are_captured_not_shown(capsys):
    def noisy(prompts, completions, **kwargs):
        import warnings

        print("scoring", len(completions))
        warnings.warn("judge is slow")
        return [float(len(c[0]["content"]) % 3) for c in completions]

    report = check_reward(noisy, prompts=PROMPTS, columns=COLUMNS, n_samples=2)
    assert capsys.readouterr() == ("", "")
    assert report.captured_output == "scoring 54\nUserWarning: judge is slow\n"  # 27 probes x 2 samples
    assert f"output ({len(report.captured_output)} chars) was captured, not shown" in str(report)


def test_module_level_state_sees_the_one_probe_call_which_passes_no_trainer_state():
    seen = []

    def remembers(prompts, completions, **kwargs):
        seen.append(kwargs["trainer_state"])
        return [0.0] * len(completions)

    before = notebook.CALLS_SEEN
    check_reward(notebook.number_check, prompts=PROMPTS, columns=COLUMNS)
    assert notebook.CALLS_SEEN == before + 1  # documented in docs/reward_checks.md
    check_reward(remembers, prompts=PROMPTS)
    assert seen == [None]  # a reward can tell a probe call: the trainer always passes its state


@pytest.mark.parametrize("huge", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400", "1e5000"])
def test_an_int_beyond_float_range_is_reported_as_non_finite_not_raised(huge):
    def overflowing(prompts, completions, **kwargs):
        return [huge if "answer" in c else 0.25 for c in completions]

    report = check_reward(overflowing)
    assert not report.ok and len(report.problems) == 1
    problem = report.problems[0]
    assert problem.startswith("'overflowing' returned NaN/inf or a number beyond float range (")
    expected = "<16610-bit integer>" if huge == 10**5000 else repr(huge)[:40] + "..."
    assert expected in problem
    assert report.rewards["garbage"] == 0.25  # the good values are still read
