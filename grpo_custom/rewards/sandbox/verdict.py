"""``SandboxResult`` and how a run's raw outcome becomes pass/fail and a reason.

Only the judge's verdict can make a run pass: it arrives on the judge server's socket, which no
process running model code holds, and it says the dataset's test code ran to its end. Everything the solution process
produced (exit status, stdout, stderr, tracebacks) is model-controlled and used only to explain a
failure, never to pass one.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

from grpo_custom.rewards.sandbox.pair import RunOutcome
from grpo_custom.rewards.sandbox.process_guard import BLOCKED_EXIT_CODE, BLOCKED_MARKER

OUTPUT_LIMIT_CHARS = 20_000


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        passed: the judge ran the whole test code without an exception (the only way to pass).
        reason: ``"passed"``; ``"failed: <exception line>"`` (from the judge, or why the solution
            process ended); ``"timeout"``; ``"memory"``; ``"output limit"``; ``"crashed: <status> [...]"``
            (the solution process died before the tests could run); ``"blocked: <event>"`` (process
            level's guard); ``"bad tests: ..."``; ``"judge: ..."`` (the judge process failed).
        returncode: the solution process's exit status if it ended on its own (negative: by that
            signal), None if it was still running when the run ended.
        stdout: the solution's stdout (last ``OUTPUT_LIMIT_CHARS`` characters).
        stderr: the solution's stderr (last ``OUTPUT_LIMIT_CHARS`` characters).
        wall_time: seconds from start until the run ended.
        pid: the solution process's id (at OS isolation: its bwrap, outside the sandbox).
        workdir: the host directory it ran in at ``isolation="process"`` (removed), None at OS isolation.
        isolation: ``"os"`` or ``"process"``.
        judge_output: what the judge printed (stdout and stderr) while running this program's tests (last
            ``OUTPUT_LIMIT_CHARS`` characters).
    """

    passed: bool
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_time: float
    pid: int
    workdir: str | None
    isolation: str = "os"
    judge_output: str = ""


def _text(data: bytes) -> str:
    return data[-4 * OUTPUT_LIMIT_CHARS :].decode("utf-8", "replace")[-OUTPUT_LIMIT_CHARS:]


def _solution_reason(returncode: int | None, stderr: str, fallback: str) -> str:
    """Why the solution process ended (its own account: informative only)."""
    if returncode is None:
        return fallback
    if returncode == -signal.SIGXCPU:
        return "timeout"
    marker = stderr.rfind(BLOCKED_MARKER)
    if returncode == BLOCKED_EXIT_CODE and marker >= 0:
        return "blocked: " + stderr[marker + len(BLOCKED_MARKER) :].strip().splitlines()[0][:200]
    if returncode == 0:
        return "failed: exited before the tests finished"
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if "Traceback (most recent call last)" in stderr and last:
        if last.startswith("MemoryError"):
            return "memory"
        return f"crashed: {returncode} ({last[:200]})"
    if returncode < 0 and -returncode in signal.valid_signals():
        return f"crashed: {returncode} ({signal.Signals(-returncode).name})"
    return f"crashed: {returncode}"


def classify(outcome: RunOutcome, isolation: str) -> SandboxResult:
    """The result of a run: pass/fail from the judge's verdict, the reason from everything."""
    stdout, stderr = _text(outcome.solution_stdout), _text(outcome.solution_stderr)
    verdict = outcome.verdict
    passed = bool(verdict and verdict.get("passed") is True) and not outcome.timed_out and not outcome.output_exceeded
    if passed:
        reason = "passed"
    elif outcome.timed_out:
        reason = "timeout"
    elif outcome.output_exceeded:
        reason = f"output limit: the {outcome.output_exceeded} wrote more than the output_bytes limit"
    elif verdict is None:
        judge_lines = [line for line in _text(outcome.judge_output).splitlines() if line.strip()]
        reason = f"judge: ended without a verdict ({outcome.judge_returncode}" + (
            f", {judge_lines[-1][:200]})" if judge_lines else ")")
    elif verdict.get("solution_ended"):
        reason = _solution_reason(outcome.solution_returncode, stderr, str(verdict.get("reason", "failed")))
    else:
        reason = str(verdict.get("reason", "failed"))[:400]
    return SandboxResult(passed=passed, reason=reason, returncode=outcome.solution_returncode, stdout=stdout,
                         stderr=stderr, wall_time=outcome.wall_time, pid=outcome.pid, workdir=outcome.workdir,
                         isolation=isolation, judge_output=_text(outcome.judge_output))
