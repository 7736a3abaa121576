"""Reward functions of the kinds Unsloth's GRPO notebooks use, written for these tests in the notebooks' style.

Two families, as in the Llama 3.1 (8B) and Qwen3 (4B) GRPO notebooks: an XML-tag answer format
(``<reasoning>...</reasoning><answer>...</answer>``: strict and soft format rewards, a tag-count reward, an
integer-answer reward, correctness against the dataset's ``answer`` column, which prints a sample) and a
``<start_working_out>...<end_working_out><SOLUTION>...</SOLUTION>`` format (exact and approximate format
rewards, a graded answer check, a number check that prints every few calls by a module-level counter).
Completions are conversational (``[{"role": "assistant", "content": ...}]``), as in the notebooks.
"""
from __future__ import annotations

import re

REASONING_FORMAT = "<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"
WORKING_FORMAT = "<start_working_out>{reasoning}<end_working_out><SOLUTION>{answer}</SOLUTION>"


def _texts(completions) -> list[str]:
    return [completion[0]["content"] for completion in completions]


def answer_between_tags(text: str) -> str:
    """What lies between the last ``<answer>`` and the next ``</answer>`` (the whole text without tags)."""
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def strict_xml_format(completions, **kwargs) -> list[float]:
    """0.5 when the completion is exactly the tagged layout, one tag per line."""
    layout = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", re.DOTALL)
    return [0.5 if layout.match(text) else 0.0 for text in _texts(completions)]


def soft_xml_format(completions, **kwargs) -> list[float]:
    """0.5 when a reasoning block is followed by an answer block, any whitespace."""
    layout = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
    return [0.5 if layout.search(text) else 0.0 for text in _texts(completions)]


def xml_tag_count(completions, **kwargs) -> list[float]:
    """0.125 per well-placed tag, minus 0.001 per character after the closing answer tag."""
    scores = []
    for text in _texts(completions):
        score = sum(0.125 for tag in ("<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n") if text.count(tag) == 1)
        if text.count("\n</answer>") == 1:
            score += 0.125 - 0.001 * len(text.split("\n</answer>")[-1].strip())
        scores.append(score)
    return scores


def integer_answer(completions, **kwargs) -> list[float]:
    """0.5 when the tagged answer is a non-negative integer."""
    return [0.5 if answer_between_tags(text).isdigit() else 0.0 for text in _texts(completions)]


def answer_correctness(prompts, completions, answer, **kwargs) -> list[float]:
    """2.0 when the tagged answer equals the ``answer`` column; prints the first sample, as the notebook does."""
    texts = _texts(completions)
    extracted = [answer_between_tags(text) for text in texts]
    print("-" * 20, f"Question:\n{prompts[0][-1]['content']}", f"\nAnswer:\n{answer[0]}",
          f"\nResponse:\n{texts[0]}", f"\nExtracted:\n{extracted[0]}")
    return [2.0 if guess == expected else 0.0 for guess, expected in zip(extracted, answer)]


_SOLUTION = re.compile(r"<start_working_out>.*?<end_working_out>\s*<SOLUTION>(.+?)</SOLUTION>", re.DOTALL)


def working_format_exactly(completions, **kwargs) -> list[float]:
    """3.0 when the working-out and solution tags appear in order."""
    return [3.0 if _SOLUTION.search(text) else 0.0 for text in _texts(completions)]


def working_format_approximately(completions, **kwargs) -> list[float]:
    """+0.5 per tag present exactly once, -1.0 per tag missing or repeated."""
    tags = ("<end_working_out>", "<SOLUTION>", "</SOLUTION>")
    return [sum(0.5 if text.count(tag) == 1 else -1.0 for tag in tags) for text in _texts(completions)]


def graded_answer(prompts, completions, answer, **kwargs) -> list[float]:
    """5 for the exact answer, 3.5 up to spaces, 2/1.5 within 10%/20%, -2.5 wrong, -4.5 unparsable, 0 no tags."""
    scores = []
    for text, expected in zip(_texts(completions), answer):
        found = _SOLUTION.search(text)
        if found is None:
            scores.append(0.0)
            continue
        guess = found.group(1)
        if guess == expected:
            scores.append(5.0)
        elif guess.strip() == expected.strip():
            scores.append(3.5)
        else:
            try:
                ratio = float(guess) / float(expected)
                scores.append(2.0 if 0.9 <= ratio <= 1.1 else 1.5 if 0.8 <= ratio <= 1.2 else -2.5)
            except (ValueError, ZeroDivisionError):
                scores.append(-4.5)
    return scores


CALLS_SEEN = 0  # module-level counter, as the notebook's number check keeps one to print every few calls
PRINT_EVERY = 5


def number_check(prompts, completions, answer, **kwargs) -> list[float]:
    """3.5 when the first number after <SOLUTION> equals the answer, -1.5 otherwise, 0 without one; prints
    every PRINT_EVERY-th call (counted in the module-level CALLS_SEEN)."""
    global CALLS_SEEN
    texts = _texts(completions)
    numbers = [re.search(r"<SOLUTION>\s*([-]?[\d.,]+)", text) for text in texts]
    if CALLS_SEEN % PRINT_EVERY == 0:
        print("*" * 20, f"Question:\n{prompts[0][-1]['content']}", f"\nAnswer:\n{answer[0]}", f"\nResponse:\n{texts[0]}")
    CALLS_SEEN += 1
    scores = []
    for found, expected in zip(numbers, answer):
        if found is None:
            scores.append(0.0)
            continue
        try:
            scores.append(3.5 if float(found.group(1).replace(",", "")) == float(expected) else -1.5)
        except ValueError:
            scores.append(0.0)
    return scores


NOTEBOOK_REWARDS = (strict_xml_format, soft_xml_format, xml_tag_count, integer_answer, answer_correctness,
                    working_format_exactly, working_format_approximately, graded_answer, number_check)
