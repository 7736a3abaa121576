"""``run_in_sandbox``: choose the isolation level (refusing silent downgrades), run, classify, clean up."""
from __future__ import annotations

import logging
import os

from grpo_custom.rewards.sandbox.bwrap import isolation_level, os_backend
from grpo_custom.rewards.sandbox.cleanup import report_leftover
from grpo_custom.rewards.sandbox.launch import SandboxUnavailableError
from grpo_custom.rewards.sandbox.pair import run_pair
from grpo_custom.rewards.sandbox.limits import MIB, SandboxLimits
from grpo_custom.rewards.sandbox.verdict import SandboxResult, classify

logger = logging.getLogger("grpo_custom.rewards.sandbox")
ISOLATION_LEVELS = ("auto", "os", "process")


def resolve_isolation(isolation: str, caller: str = "run_in_sandbox") -> str:
    """``"os"`` or ``"process"`` for an ``isolation`` argument; raises where "auto"/"os" cannot be had."""
    if isolation not in ISOLATION_LEVELS:
        raise ValueError(f"{caller} isolation must be one of {', '.join(map(repr, ISOLATION_LEVELS))}, "
                         f"got {isolation!r}.")
    if isolation == "process":
        return "process"
    level, reason = isolation_level()
    if level == "os":
        return "os"
    raise SandboxUnavailableError(
        f"{caller}(isolation={isolation!r}) needs OS isolation (bubblewrap: user, pid, network and mount "
        f"namespaces), which this machine does not give: {reason}. Either run where unprivileged user "
        "namespaces work (check with `grpo-custom doctor`), or opt in to the weaker level with "
        "isolation='process': plain subprocesses of the trainer with rlimits and an audit hook, which "
        "model code can switch off, then act with the trainer's privileges and forge its own results."
    )


def warn_process_level(caller: str) -> None:
    """The warning logged on every run or reward call at ``isolation="process"``."""
    logger.warning(
        "%s: isolation='process' runs model code as plain subprocesses of the trainer (uid %d) guarded only "
        "by rlimits and an in-process audit hook; code that switches the hook off acts with the trainer's "
        "privileges and can forge its test results. Use isolation='auto' where user namespaces work.",
        caller, os.getuid(),
    )


def warn_process_cap(limits: SandboxLimits, level: str) -> None:
    """Log when ``max_processes > 1`` cannot be honoured (a root trainer at OS isolation: one process)."""
    backend = os_backend()[0] if level == "os" else None
    if backend is not None and limits.max_processes > 1 and backend.deny_process_creation:
        logger.warning(
            "max_processes=%d cannot be enforced for a trainer running as root (the kernel does not apply "
            "RLIMIT_NPROC to uid 0); the sandbox refuses new processes and threads instead (1 process).",
            limits.max_processes,
        )


def run_checked(code: str, tests: str, limits: SandboxLimits, level: str) -> SandboxResult:
    """Run at a resolved level; report anything left on the host once; never raise for what the program did."""
    result = classify(outcome := run_pair(code, tests, limits, level), level)
    report_leftover(outcome.cleanup_problem)
    return result


def run_in_sandbox(
    code: str,
    tests: str = "",
    timeout: float = 5.0,
    memory_mb: int = 512,
    cpu_seconds: int | None = None,
    *,
    isolation: str = "auto",
    disk_mb: int = 64,
    max_processes: int = 1,
    open_files: int = 64,
    output_bytes: int = 1 * MIB,
) -> SandboxResult:
    """Run ``code`` and judge it with ``tests`` (Python, e.g. ``assert`` lines) in two isolated processes.

    The solution process runs ``code`` as module ``solution`` (so ``if __name__ == "__main__"`` blocks
    do not run); the judge (a pooled judge server, see ``judge_pool.py``) runs ``tests``, reaching the solution's names through calls the
    solution process answers with plain data (see the package docstring for the protocol and what
    it makes unforgeable). Passing means the judge ran all of ``tests`` without an exception.

    Args:
        code: the program.
        tests: test code; names it uses without defining them resolve to the solution's globals
            (standard-library modules and the solution's own imports are imported in the judge).
        timeout, memory_mb, cpu_seconds, disk_mb, max_processes, open_files, output_bytes: limits,
            see :class:`SandboxLimits` (defaults: 5 s wall, ``ceil(timeout) + 1`` CPU seconds, 512 MiB
            address space, 64 MiB disk, 1 process, 64 open files, 1 MiB of output).
        isolation: "auto" / "os": bubblewrap sandboxes; raises :class:`SandboxUnavailableError` where
            this machine cannot give them. "process": plain subprocesses (weak; logs a warning).
    """
    if not isinstance(code, str) or not isinstance(tests, str):
        raise TypeError(
            f"run_in_sandbox needs code and tests as str, got {type(code).__name__} and {type(tests).__name__}."
        )
    limits = SandboxLimits(timeout=timeout, cpu_seconds=cpu_seconds, memory_mb=memory_mb, disk_mb=disk_mb,
                           max_processes=max_processes, open_files=open_files, output_bytes=output_bytes)
    level = resolve_isolation(isolation)
    if level == "process":
        warn_process_level("run_in_sandbox")
    warn_process_cap(limits, level)
    return run_checked(code, tests, limits, level)
