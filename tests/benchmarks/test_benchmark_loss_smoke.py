"""``benchmarks/bench_loss.py --smoke`` runs, reports every variant at both vocab sizes, and its
memory numbers show what the chunked entropy saves over a full-logits entropy."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import grpo_custom

pytestmark = pytest.mark.unsloth
ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("base", "kl k3", "kl k3 (k2 grad)", "entropy", "entropy (recompute)", "base (recompute logps)",
            "naive entropy")
# unsloth_zoo >= 2026.10.9 (its fused-linear scorer): Unsloth's fused entropy and its logit-keeping chunked scorer
FUSED_VARIANTS = ("entropy (Unsloth fused-linear)", "base (chunked scorer, keeps logits)")
# every registered policy loss as grpo-custom's term beside Unsloth's loss (issue 15)
POLICY_VARIANTS = tuple(f"policy {name}" for name in grpo_custom.list_policy_losses())
VALUE_VARIANTS = ("value head (head)", "value head (shared_head)")  # issue 22: a value function's head and loss
PAIRED_ROW = re.compile(r"^\| (\d+) \| (policy [^|]+?) \| ([\d.]+) \| ([\d.]+) \|$")
VOCABS = (32000, 151936)
GRADIENT_ROW = re.compile(r"^\| (\d+) \| ([^|]+?) \| ([\d.e+-]+) \|$")
ROW = re.compile(r"^\| (\d+) \| ([^|]+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$")
CHECK = re.compile(r"^\| (\d+) \| ([^|]+?) \| ([\d.]+) \| ([^|]+?) \| (PASS|FAIL) \|$")


@pytest.fixture(scope="module")
def smoke_run():
    """stdout of one ``--smoke`` run, and whether it left the committed CPU results untouched."""
    results_file = ROOT / "benchmarks" / "RESULTS_loss_cpu.md"
    before = results_file.read_bytes() if results_file.exists() else None
    completed = subprocess.run([sys.executable, "benchmarks/bench_loss.py", "--smoke"], cwd=ROOT,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    after = results_file.read_bytes() if results_file.exists() else None
    return completed.stdout, before == after


def _rows(stdout: str) -> dict[tuple[int, str], dict[str, float]]:
    rows = {}
    for line in stdout.splitlines():
        match = ROW.match(line.strip())
        if match:
            vocab, name, memory, memory_ratio, milliseconds, time_ratio = match.groups()
            rows[(int(vocab), name)] = {"memory": float(memory), "memory_ratio": float(memory_ratio),
                                        "ms": float(milliseconds), "time_ratio": float(time_ratio)}
    return rows


def test_smoke_reports_every_variant_at_both_vocab_sizes(smoke_run):
    stdout, _ = smoke_run
    rows = _rows(stdout)
    names = VARIANTS + (FUSED_VARIANTS if _fused(stdout) else ()) + POLICY_VARIANTS + VALUE_VARIANTS
    assert set(rows) == {(vocab, name) for vocab in VOCABS for name in names}, sorted(rows)
    for (vocab, name), row in rows.items():
        assert row["memory"] > 0 and row["ms"] > 0, (vocab, name, row)
    for vocab in VOCABS:
        assert rows[(vocab, "base")]["memory_ratio"] == 1.0 and rows[(vocab, "base")]["time_ratio"] == 1.0
        naive, base = rows[(vocab, "naive entropy")], rows[(vocab, "base")]
        assert naive["memory_ratio"] == pytest.approx(naive["memory"] / base["memory"], abs=0.02)


def _fused(stdout: str) -> bool:
    """Whether the run's Unsloth scored with its fused-linear kernel (the report's scorer line says)."""
    fused = "- Unsloth's scorer: fused-linear kernel" in stdout
    assert fused or "- Unsloth's scorer: chunked log-softmax" in stdout
    return fused


def test_report_names_the_kernel_a_trainer_would_pick(smoke_run):
    # the installed Unsloth decides: releases with the chunked scorer keep float32 logits at these sizes; the
    # fused-linear scorer (unsloth_zoo >= 2026.10.9) takes all 64 tokens in one row chunk (its floor is hundreds
    # of rows), so it holds their logits at once: either way auto runs the one-pass kernel in float32 on CPU
    _fused(smoke_run[0])  # the report names the scorer
    for vocab in (32000, 151936):
        assert (f"`entropy_kernel=\"auto\"` in a trainer, for one loss call of 8 rows × 8 tokens at V={vocab}: "
                "grpo-custom's one-pass kernel") in smoke_run[0]


def test_every_entropy_kernel_gradient_agrees_with_the_full_logits_reference(smoke_run):
    errors = {(int(m.group(1)), m.group(2)): float(m.group(3))
              for m in map(GRADIENT_ROW.match, map(str.strip, smoke_run[0].splitlines())) if m}
    names = ("entropy", "entropy (recompute)") + (FUSED_VARIANTS[:1] if _fused(smoke_run[0]) else ())
    assert set(errors) == {(vocab, name) for vocab in VOCABS for name in names}, sorted(errors)
    for key, error in errors.items():
        assert error < 1e-4, (key, error)


def test_naive_entropy_needs_at_least_4x_the_memory_of_the_chunked_entropy_at_152k(smoke_run):
    rows = _rows(smoke_run[0])
    naive, chunked = rows[(151936, "naive entropy")]["memory"], rows[(151936, "entropy")]["memory"]
    assert naive >= 4.0 * chunked, (naive, chunked)
    # the full-logits peak grows with the vocabulary (151936 / 32000 = 4.75): the meter measures real tensors
    assert naive >= 3.0 * rows[(32000, "naive entropy")]["memory"]


def test_smoke_prints_a_verdict_per_target_and_writes_no_results_file(smoke_run):
    stdout, results_untouched = smoke_run
    checks = {(int(m.group(1)), m.group(2)): (float(m.group(3)), m.group(5))
              for m in map(CHECK.match, map(str.strip, stdout.splitlines())) if m}
    expected = {(vocab, check) for vocab in VOCABS for check in ("entropy peak memory / base", "entropy time / base")}
    expected.add((151936, "naive entropy peak memory / entropy"))
    expected |= {(vocab, f"{name} {check}") for vocab in VOCABS for name in POLICY_VARIANTS
                 for check in ("peak memory / base", "time / base (paired)")}
    expected |= {(vocab, f"{name} {check}") for vocab in VOCABS for name in VALUE_VARIANTS
                 for check in ("peak memory / base", "time / base")}
    assert set(checks) == expected, sorted(checks)
    value, verdict = checks[(151936, "naive entropy peak memory / entropy")]
    assert verdict == ("PASS" if value >= 4.0 else "FAIL")
    assert results_untouched


def test_every_policy_loss_has_a_paired_time_row(smoke_run):
    paired = {(int(m.group(1)), m.group(2)): float(m.group(4))
              for m in map(PAIRED_ROW.match, map(str.strip, smoke_run[0].splitlines())) if m}
    assert set(paired) == {(vocab, name) for vocab in VOCABS for name in POLICY_VARIANTS}, sorted(paired)
    assert all(0.0 < ratio < 100.0 for ratio in paired.values()), paired
