"""The limits of one sandboxed run (``SandboxLimits``): defaults, validation and the rlimits they become."""
from __future__ import annotations

import math
import resource
from dataclasses import dataclass

MIB = 2**20
MESSAGE_BYTES = 16 * MIB  # largest single value passed between the judge and the solution process


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits; each process of a run (the solution's and the judge's) gets them.

    A judge server serves many programs (``judge_pool.py``): it gets the same address-space, file,
    open-file and process limits, the trainer's wall deadline per program, and ``2 * cpu_limit`` as its
    lifetime ``RLIMIT_CPU``; it is retired once it has used more than ``cpu_limit``, so each program
    starts with at least ``cpu_limit`` CPU seconds left in the judge.

    Attributes:
        timeout: wall-clock seconds for the whole run; at the limit every process of the run is killed.
        cpu_seconds: CPU seconds per process (``RLIMIT_CPU``); default ``ceil(timeout) + 1``.
        memory_mb: address space per process (``RLIMIT_AS``), MiB.
        disk_mb: total disk the program may fill, MiB: the size of its private tmpfs at OS isolation
            (and the largest file, ``RLIMIT_FSIZE``, at both levels).
        max_processes: processes and threads a program may run at once, itself included. At OS
            isolation with a non-root trainer this is ``RLIMIT_NPROC`` in the sandbox's own user
            namespace; with a root trainer the kernel does not enforce ``RLIMIT_NPROC`` (the sandbox
            uid maps to host uid 0), so the seccomp filter forbids new processes and threads: 1.
        open_files: open file descriptors per process (``RLIMIT_NOFILE``).
        output_bytes: bytes a program may write to stdout and stderr together; past it the run is killed.
    """

    timeout: float = 5.0
    cpu_seconds: int | None = None
    memory_mb: int = 512
    disk_mb: int = 64
    max_processes: int = 1
    open_files: int = 64
    output_bytes: int = 1 * MIB

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"sandbox timeout must be > 0 seconds, got {self.timeout!r}.")
        if not self.memory_mb >= 32:
            raise ValueError(f"sandbox memory_mb must be >= 32 (the interpreter needs it), got {self.memory_mb!r}.")
        if self.cpu_seconds is not None and not self.cpu_seconds >= 1:
            raise ValueError(f"sandbox cpu_seconds must be >= 1, got {self.cpu_seconds!r}.")
        for name, low in (("disk_mb", 1), ("max_processes", 1), ("open_files", 16), ("output_bytes", 1024)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= low):
                raise ValueError(f"sandbox {name} must be an int >= {low}, got {value!r}.")

    @property
    def cpu_limit(self) -> int:
        """CPU seconds per process: ``cpu_seconds`` or ``ceil(timeout) + 1``."""
        return math.ceil(self.timeout) + 1 if self.cpu_seconds is None else int(self.cpu_seconds)

    def rlimits(self, nproc: int | None) -> dict[str, list[int]]:
        """``{name: [soft, hard]}`` for the in-sandbox runner to set before any other code runs.

        ``nproc``: the ``RLIMIT_NPROC`` value, or None to leave it (where the kernel would not enforce it).
        """
        limits = {
            "RLIMIT_AS": [self.memory_mb * MIB] * 2,
            "RLIMIT_CPU": [self.cpu_limit, self.cpu_limit + 1],
            "RLIMIT_FSIZE": [self.disk_mb * MIB] * 2,
            "RLIMIT_NOFILE": [self.open_files] * 2,
            "RLIMIT_CORE": [0, 0],
        }
        if nproc is not None:
            limits["RLIMIT_NPROC"] = [nproc] * 2
        return {name: value for name, value in limits.items() if hasattr(resource, name)}
