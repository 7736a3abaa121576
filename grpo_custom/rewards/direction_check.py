"""Sanity-check a reward function's direction and outputs on synthetic completions before training.

GRPO *maximizes* reward. A length reward written as a distance, ``abs(target - len(c))``, silently
trains the model away from the target. :func:`check_reward` calls a TRL reward function once on a
batch of probe completions (empty, short, near the target length, far from it, very long,
repeated words, garbage, common answer formats) and reports:

* **direction**: the reward rises with the distance to the target length. Statistic: the Spearman
  rank correlation ρ between ``|length - target|`` and the mean reward of the six length probes
  (``empty``, ``very_short``, ``far_short``, ``near``, ``far_long``, ``very_long``); flagged when
  ``ρ > 0.5`` *and* the mean reward of ``far_short`` and ``far_long`` exceeds that of ``near``.
  A reward unrelated to length (e.g. a format reward) has no such correlation and is not flagged;
* **direction without a target** (``target=None``): the reward of words of 0, 1, 2, 4, ..., 4096 units (the
  "scale" probes). A valley (lowest at an interior length with at least three probes on each side;
  Spearman ρ of reward against length ≤ −0.9 up to it and ≥ 0.9 from it on; both ends above it) is a
  distance used as a reward: flagged. A peak (the mirror image) establishes the direction: ``"ok"``.
  Anything else (no length dependence, a monotone preference, noise) leaves it ``"unchecked"``, never ``"ok"``.
  A reward that declares ``fn.higher_is_better = True`` (the built-in rewards) is ``"declared"`` and not
  probed for direction;
* **non-finite** values, **non-numbers**, the **wrong number** of values, an **exception** (each value through
  the guard's :func:`~grpo_custom.rewards.guard.classify_reward_value`).

A reward that is the same over every probe (or ``None`` for every probe) is only a *note*, never a problem:
probes miss a format reward's format (``<reasoning>``/``<answer>`` tags, ``<SOLUTION>``) and an answer that
matches a dataset column, so they are no evidence of a missing learning signal. The trainer judges that from
the model's own completions (:class:`grpo_custom.rewards.reward_health.ConstancyEvidence`).

The probe call runs the user's function for real: whatever it prints (stdout/stderr) and the warnings it emits
are captured into the report (``captured_output``), not shown; module-level state (a global counter) does see
the call. Probe calls pass ``trainer_state=None`` (the trainer's own calls never do).
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import math
import random
import string
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from grpo_custom.rewards.guard import classify_reward_value, describe_reward_value, reward_values
# reward_health_metrics and reward_length_correlation lived here: re-exported from their new home
from grpo_custom.rewards.reward_health import (  # noqa: F401
    reward_health_metrics,
    reward_length_correlation,
    spearman_correlation,
)

DEFAULT_TARGET = 20
LENGTH_PROBES = ("empty", "very_short", "far_short", "near", "far_long", "very_long")
OTHER_PROBES = ("repeated", "garbage", "think_answer", "boxed_answer")  # + "column:<name>" per dataset column
DIRECTION_RHO_THRESHOLD = 0.5
SCALE_LENGTHS = (0,) + tuple(2 ** k for k in range(15))  # 0, 1, 2, 4, ..., 16384 units
SCALE_RHO_THRESHOLD = 0.9
DIRECTIONS = ("ok", "wrong", "declared", "unchecked")
DIRECTION_FIX = "GRPO maximizes reward: use -|d|, 1/(1+|d|) or exp(-k|d|) with d = length - target"
_WORDS = ("the", "answer", "is", "a", "small", "number", "because", "we", "add", "two", "and", "three", "so", "it")
_GARBAGE_CHARS = string.punctuation + "".join(chr(c) for c in range(0xA1, 0x180))


@dataclass
class RewardCheckReport:
    """Result of :func:`check_reward`.

    Attributes:
        name: the reward function's name.
        ok: no problem found.
        problems: one message per problem, each suggesting a fix.
        rewards: probe name → mean reward over its samples (NaN when no sample was scored).
        lengths: probe name → length of its completions in ``unit`` (first sample).
        target: the target length used for the length probes.
        unit: ``"chars"`` or ``"tokens"``.
        distance_correlation: Spearman ρ between ``|length - target|`` and reward over the length
            probes (NaN when undefined, e.g. constant rewards).
        direction: ``"ok"`` (established: the reward peaks at a length, or at ``target``), ``"wrong"`` (it
            rises with the distance to a length), ``"declared"`` (``fn.higher_is_better``) or ``"unchecked"``
            (could not be established: no length dependence, monotone, NaN).
        notes: observations that are no evidence of a problem (the same value, or ``None``, for every probe).
        probed: what the probes were, in words (for messages).
        captured_output: what the probe call printed to stdout/stderr and the warnings it emitted (not shown).
    """

    name: str
    ok: bool
    problems: list[str]
    rewards: dict[str, float]
    lengths: dict[str, int] = field(default_factory=dict)
    target: int = DEFAULT_TARGET
    unit: str = "chars"
    distance_correlation: float = math.nan
    direction: str = "unchecked"
    notes: list[str] = field(default_factory=list)
    probed: str = ""
    captured_output: str = ""

    def __str__(self) -> str:
        lines = [
            f"Reward check of {self.name!r}: {'OK' if self.ok else 'PROBLEMS FOUND'}, direction {self.direction} "
            f"(target {self.target} {self.unit}, Spearman rho(|length - target|, reward) = "
            f"{self.distance_correlation:+.2f})"
        ]
        for probe, reward in self.rewards.items():
            lines.append(f"  {probe:<13} length {self.lengths.get(probe, 0):>5}  reward {reward:.6g}")
        lines.extend(f"  PROBLEM: {problem}" for problem in self.problems)
        lines.extend(f"  NOTE: {note}" for note in self.notes)
        if self.probed:
            lines.append(f"  probed: {self.probed}")
        if self.captured_output:
            lines.append(f"  the probe call's output ({len(self.captured_output)} chars) was captured, not shown")
        return "\n".join(lines)


def _probe_lengths(target: int) -> dict[str, int]:
    """Length (in units) of each length probe for ``target``; strictly increasing."""
    return {
        "empty": 0,
        "very_short": max(1, round(target / 10)),
        "far_short": round(target / 2),
        "near": target,
        "far_long": 2 * target,
        "very_long": max(10 * target, target + 200),
    }


def _sized_text(pieces: Callable[[], str], length: int, unit: str) -> str:
    """Text of exactly ``length`` chars (``unit="chars"``) or ``length`` space-separated pieces (``"tokens"``)."""
    if unit == "tokens":
        return " ".join(pieces() for _ in range(length))
    text = ""
    while len(text) < length:
        text += pieces() + " "
    return text[:length]


def _probe_texts(target: int, unit: str, rng: random.Random) -> dict[str, str]:
    """One sample of every probe's completion text."""

    def word() -> str:
        return rng.choice(_WORDS)

    texts = {name: _sized_text(word, length, unit) for name, length in _probe_lengths(target).items()}
    texts["repeated"] = _sized_text(lambda: "the", target, unit)
    texts["garbage"] = _sized_text(lambda: "".join(rng.choices(_GARBAGE_CHARS, k=rng.randint(1, 6))), target, unit)
    texts["think_answer"] = f"<think>{_sized_text(word, target, unit)}</think><answer>{rng.randint(0, 99)}</answer>"
    texts["boxed_answer"] = f"{_sized_text(word, target, unit)} \\boxed{{{rng.randint(0, 99)}}}"
    return texts


def _scale_direction(rewards: Sequence[float]) -> tuple[str, int]:
    """Direction from the mean rewards of the scale probes (:data:`SCALE_LENGTHS` order).

    Returns ``("wrong", k)`` for a valley at index k, ``("ok", k)`` for a peak at k, else ``("unchecked", -1)``.
    """
    values = np.asarray(rewards, dtype=np.float64)
    if not np.isfinite(values).all():
        return "unchecked", -1
    spread = float(values.max() - values.min())
    if spread <= 1e-9 * max(1.0, float(np.abs(values).max())):
        return "unchecked", -1
    indices = np.arange(len(values), dtype=np.float64)
    for verdict, extreme, sign in (("wrong", int(values.argmin()), 1.0), ("ok", int(values.argmax()), -1.0)):
        if not 2 <= extreme <= len(values) - 3:  # at least three probes on each side
            continue
        # sign = 1 (valley): falling up to the extreme, rising after it; sign = -1 (peak): the mirror image
        left = spearman_correlation(indices[: extreme + 1], values[: extreme + 1])
        right = spearman_correlation(indices[extreme:], values[extreme:])
        ends = sign * (values[[0, -1]] - values[extreme])  # > 0: both ends above a valley / below a peak
        if (-sign * left >= SCALE_RHO_THRESHOLD and sign * right >= SCALE_RHO_THRESHOLD
                and (ends > 1e-9 * spread).all()):
            return verdict, extreme
    return "unchecked", -1


def _synthetic_ids(text: str, unit: str) -> list[int]:
    """Fake token ids whose count is the text's length in ``unit`` (one per char, or one per space-separated piece)."""
    pieces = text if unit == "chars" else text.split()
    return [100 + index % 1000 for index in range(len(pieces))]


def _length_in_unit(text: str, unit: str) -> int:
    """Length of ``text`` in chars, or in space-separated pieces for ``unit="tokens"``."""
    return len(text) if unit == "chars" else len(text.split())


def _call(fn: Callable, arguments: dict) -> tuple[Any, str]:
    """Call a sync or async reward function (async ones run on a fresh event loop in a worker thread), capturing
    what it prints to ``sys.stdout``/``sys.stderr`` and the warnings it emits: returns ``(output, captured)``.
    Output written straight to the file descriptors (C extensions, subprocesses) is not captured."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
                with ThreadPoolExecutor(max_workers=1) as pool:
                    output = pool.submit(asyncio.run, fn(**arguments)).result()
            else:
                output = fn(**arguments)
        finally:
            for warning in caught:
                buffer.write(f"{warning.category.__name__}: {warning.message}\n")
    return output, buffer.getvalue()


def _describe_probes(probes: Sequence[str], lengths: Mapping[str, int], target: int, unit: str,
                     n_samples: int) -> str:
    """The probes of one check in words, e.g. for a warning: what a reward was (and was not) shown."""
    parts = [f"lengths {', '.join(str(lengths[p]) for p in LENGTH_PROBES)} {unit} around target {target}"]
    scale = [p for p in probes if p.startswith("scale_")]
    if scale:
        parts.append(f"lengths {', '.join(p[len('scale_'):] for p in scale[:4])}, ..., {scale[-1][len('scale_'):]} "
                     f"{unit} (no target)")
    parts += ["one repeated word", "punctuation garbage", "<think>...</think><answer>N</answer>",
              "text ending in \\boxed{N}"]
    parts += [f"'The answer is <row's {p[len('column:'):]}>'" for p in probes if p.startswith("column:")]
    return f"{len(probes)} kinds of synthetic completion x {n_samples} samples, in one call: " + "; ".join(parts)


def _format_values(values: list[tuple[str, Any]]) -> str:
    """``probe=value`` pairs (first four) for a problem message."""
    return (", ".join(f"{probe}={describe_reward_value(value, 40, typed=False)}" for probe, value in values[:4])
            + (" ..." if len(values) > 4 else ""))


def check_reward(
    fn: Callable,
    prompts: Sequence[Any] | None = None,
    target: int | None = None,
    *,
    unit: str = "chars",
    n_samples: int = 4,
    seed: int = 0,
    columns: Mapping[str, Sequence[Any]] | None = None,
) -> RewardCheckReport:
    """Call ``fn`` once on a batch of synthetic probe completions and report problems (see module docstring).

    Args:
        fn: a TRL reward function (sync or async).
        prompts: prompts to pair with the probes (strings, or lists of messages for
            conversational data: probes then become ``[{"role": "assistant", "content": ...}]``);
            default one plain prompt. Sample ``j`` of each probe uses ``prompts[j % len(prompts)]``.
        target: target length in ``unit`` for the length probes (>= 3). Default: the probes use
            :data:`DEFAULT_TARGET` and the direction is established without a target, by the scale probes.
        unit: ``"chars"`` or ``"tokens"``; ``completion_ids`` hold one fake id per char, or per
            space-separated word (the probes' "tokens").
        n_samples: random variants of each probe (the reward per probe is their mean).
        seed: seed of the probe texts.
        columns: extra dataset columns passed as kwargs, one value per prompt (e.g.
            ``{"solution": ["42"]}``), repeated like the prompts.
    """
    name = getattr(fn, "__name__", type(fn).__name__)
    declared = getattr(fn, "higher_is_better", None) is True
    probe_scales = target is None and not declared
    if unit not in ("chars", "tokens"):
        raise ValueError(f"check_reward unit must be 'chars' or 'tokens', got {unit!r}.")
    target = DEFAULT_TARGET if target is None else target
    if isinstance(target, bool) or not isinstance(target, int) or target < 3:
        raise ValueError(f"check_reward target must be an int >= 3 (distinct probe lengths), got {target!r}.")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"check_reward n_samples must be an int >= 1, got {n_samples!r}.")
    prompts = list(prompts) if prompts is not None else ["Answer briefly:"]
    if not prompts:
        raise ValueError("check_reward prompts must not be empty.")
    columns = dict(columns or {})
    for column, values in columns.items():
        if len(values) != len(prompts):
            raise ValueError(f"check_reward column {column!r} has {len(values)} values for {len(prompts)} prompts.")
    conversational = isinstance(prompts[0], list)

    rng = random.Random(seed)
    samples = [_probe_texts(target, unit, rng) for _ in range(n_samples)]
    for j, sample in enumerate(samples):
        # Per dataset column, a completion that states that column's value of the (real) row, e.g. its reference
        # solution, so a reward that compares against a column can score something other than "wrong".
        for column, values in columns.items():
            stated = str(values[j % len(prompts)])
            sample[f"column:{column}"] = f"The answer is {stated}. \\boxed{{{stated}}}"
        if probe_scales:
            word_rng = random.Random(seed * 1000 + j)
            for length in SCALE_LENGTHS:
                sample[f"scale_{length}"] = _sized_text(lambda: word_rng.choice(_WORDS), length, unit)
    probes = list(samples[0])
    batch = [(probe, j, samples[j][probe]) for probe in probes for j in range(n_samples)]
    arguments = {
        "prompts": [prompts[j % len(prompts)] for _, j, _ in batch],
        "completions": [[{"role": "assistant", "content": t}] if conversational else t for _, _, t in batch],
        "completion_ids": [_synthetic_ids(t, unit) for _, _, t in batch],
        "step": 0,
        "progress": 0.0,
        "stage": None,
        "trainer_state": None,
        "log_extra": lambda column, values: None,
        "log_metric": lambda metric, value: None,
        **{column: [values[j % len(prompts)] for _, j, _ in batch] for column, values in columns.items()},
    }
    lengths = {probe: _length_in_unit(samples[0][probe], unit) for probe in probes}

    probed = _describe_probes(probes, lengths, target, unit, n_samples)
    captured = ""
    notes: list[str] = []

    def report(problems: list[str], rewards: dict[str, float], rho: float = math.nan,
               direction: str = "unchecked") -> RewardCheckReport:
        return RewardCheckReport(name, not problems, problems, rewards, lengths, target, unit, rho,
                                 "declared" if declared else direction, notes, probed, captured)

    try:
        output, captured = _call(fn, arguments)
    except Exception as error:  # noqa: BLE001 - reported, the check's purpose
        return report([f"{name!r} raised {type(error).__name__}: {error}. A reward function must score any "
                       "completion; return None for one it cannot score."], {})
    values = reward_values(output)
    if values is None or len(values) != len(batch):
        got = f"{len(values)} values" if values is not None else f"a {type(output).__name__}"
        return report([f"{name!r} returned {got} for {len(batch)} completions; return a list with one "
                       "value per completion."], {})

    problems: list[str] = []
    by_probe: dict[str, list[float]] = {probe: [] for probe in probes}
    bad: dict[str, list[tuple[str, Any]]] = {"non_number": [], "non_finite": []}
    for (probe, _, _), value in zip(batch, values):
        number, kind = classify_reward_value(value)
        if kind is not None:
            bad[kind].append((probe, value))
        elif number is not None:
            by_probe[probe].append(number)
    if bad["non_number"]:
        problems.append(f"{name!r} returned non-numbers ({_format_values(bad['non_number'])}); return floats "
                        "(or None for an unscorable completion).")
    if bad["non_finite"]:
        problems.append(f"{name!r} returned NaN/inf or a number beyond float range "
                        f"({_format_values(bad['non_finite'])}); these poison the group mean and std: return a "
                        "finite number, or None for an unscorable completion.")
    rewards = {probe: float(np.mean(scores)) if scores else math.nan for probe, scores in by_probe.items()}

    scored = [score for scores in by_probe.values() for score in scores]
    scored_probes = sum(1 for scores in by_probe.values() if scores)
    # Notes, not problems: probes miss formats and answers, so this is no evidence of a missing learning signal.
    if bad["non_number"] or bad["non_finite"]:
        pass
    elif not scored:
        notes.append(f"{name!r} returned None (cannot score) for every probe.")
    elif scored_probes >= 3 and max(scored) - min(scored) <= 1e-9 * max(1.0, abs(scored[0])):
        notes.append(f"{name!r} returned {scored[0]:.6g} for every probe (the probes may miss its format; "
                     "whether it varies is judged on the model's completions during training).")

    length_rewards = np.array([rewards[probe] for probe in LENGTH_PROBES])
    distances = np.array([abs(lengths[probe] - target) for probe in LENGTH_PROBES], dtype=np.float64)
    rho = spearman_correlation(distances, length_rewards) if np.isfinite(length_rewards).all() else math.nan
    far = (rewards["far_short"] + rewards["far_long"]) / 2
    direction = "unchecked"
    if declared:
        return report(problems, rewards, rho)
    if rho > DIRECTION_RHO_THRESHOLD and far > rewards["near"]:
        direction = "wrong"
        problems.append(
            f"{name!r} prefers completions far from the target length {target} {unit}: reward rises with "
            f"|length - target| (Spearman rho {rho:+.2f}; near {rewards['near']:.4g} < far {far:.4g}). "
            f"{DIRECTION_FIX}."
        )
    elif not probe_scales and rho < -DIRECTION_RHO_THRESHOLD and far < rewards["near"]:
        direction = "ok"
    if probe_scales:
        verdict, at = _scale_direction([rewards[f"scale_{length}"] for length in SCALE_LENGTHS])
        if verdict == "wrong" and direction != "wrong":
            problems.append(
                f"{name!r} prefers completions far from the target length (found without a target: its reward is "
                f"lowest at {SCALE_LENGTHS[at]} {unit} and rises for shorter and longer completions, probed at "
                f"0, 1, 2, 4, ..., {SCALE_LENGTHS[-1]} {unit}). {DIRECTION_FIX}."
            )
        direction = "wrong" if "wrong" in (verdict, direction) else verdict
    return report(problems, rewards, rho, direction)
