"""Start the sandboxed processes at an isolation level, and end them.

Each process gets its compiled runner and its payload on stdin from a memfd, never on disk, and runs
``python -I -S -B -c BOOTSTRAP``. At OS isolation (``OsLevel``) each process is a bwrap sandbox in
its own PID namespace: killing bwrap's init kills everything left inside it. At process level
(``ProcessLevel``) a process is a plain subprocess in a host temporary directory. ``pair.py`` starts
a program's solution process here; ``judge_pool.py`` starts its long-lived judge servers here, with
the same command line (``bwrap.bwrap_command``) and the same seccomp filter.
"""
from __future__ import annotations

import functools
import json
import marshal
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from grpo_custom.rewards.sandbox.bwrap import ENVIRONMENT, WORKDIR, bwrap_command, os_backend, seccomp_memfd
from grpo_custom.rewards.sandbox.cleanup import remove_tree
from grpo_custom.rewards.sandbox.limits import SandboxLimits
from grpo_custom.rewards.sandbox.reaper import init_pidfd, reap_init

_HERE = Path(__file__).resolve().parent


class SandboxUnavailableError(RuntimeError):
    """OS isolation was asked for (``isolation="auto"`` or ``"os"``) and this machine cannot give it."""


# The ``-c`` program of both processes: run the compiled runner that precedes the payload on stdin
# (compiling the runners' source in every process would cost more than starting the interpreter).
BOOTSTRAP = (
    "import marshal, os\n"
    "size, code = int.from_bytes(os.read(0, 4), 'big'), b''\n"
    "while len(code) < size:\n"
    "    code += os.read(0, size - len(code))\n"
    "exec(marshal.loads(code))\n"
)


@functools.lru_cache(maxsize=None)
def program_source(runner: str) -> str:
    """A process's program: ``codec.py`` followed by the runner file."""
    return (_HERE / "codec.py").read_text() + "\n\n" + (_HERE / runner).read_text()


@functools.lru_cache(maxsize=None)
def program_code(runner: str) -> bytes:
    """``program_source`` compiled and marshalled, with its 4-byte length in front (read by ``BOOTSTRAP``)."""
    code = marshal.dumps(compile(program_source(runner), f"<{runner[:-3]}>", "exec"))
    return len(code).to_bytes(4, "big") + code


def start_runner(backend, role: str, payload: dict, pass_fds: tuple[int, ...], stderr) -> subprocess.Popen:
    """Start ``<role>_runner.py`` at ``backend``'s level: its compiled code and ``payload`` (JSON) reach it on stdin
    from a memfd (never on disk); ``pass_fds`` stay open in it; ``stderr`` as for ``subprocess.Popen``."""
    stdin = memfd(program_code(role + "_runner.py") + json.dumps(payload).encode("utf-8"), "grpo-sandbox-" + role)
    try:
        return backend.popen(role, BOOTSTRAP, stdin, pass_fds, stderr)
    finally:
        os.close(stdin)


def memfd(data: bytes, name: str) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class OsLevel:
    """Each process in its own bwrap sandbox, its own tmpfs at ``/work``."""

    guard = False

    def __init__(self, limits: SandboxLimits):
        self.backend, why = os_backend()
        if self.backend is None:
            raise SandboxUnavailableError(why)
        self.limits = limits
        self.nproc = self.backend.nproc_limit(limits)
        self.workdir = None

    def workdir_for(self, role: str) -> str:
        return WORKDIR

    def popen(self, role: str, source: str, stdin: int, pass_fds: tuple[int, ...], stderr) -> subprocess.Popen:
        seccomp_fd = seccomp_memfd(self.backend.deny_process_creation)
        info_r, info_w = os.pipe()
        try:
            command = bwrap_command(self.backend, self.limits, seccomp_fd, info_w)
            command += [self.backend.executable, "-I", "-S", "-B", "-c", source]
            fds = pass_fds + (info_w,) + (() if seccomp_fd is None else (seccomp_fd,))
            process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, pass_fds=fds,
                                       cwd="/", env=dict(ENVIRONMENT), start_new_session=True,
                                       **self.backend.popen_user())
        except BaseException:
            os.close(info_r)
            raise
        finally:
            os.close(info_w)
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        os.set_blocking(info_r, False)
        process.grpo_info_fd = info_r
        return process

    def kill(self, process: subprocess.Popen) -> None:
        """Kill the sandbox's init, which makes the kernel kill everything in its PID namespace, and wait
        until it has exited; then bwrap itself (bwrap exits with its program and leaves the init to die
        of ``--die-with-parent``; waiting here makes "nothing of the run is left" hold on return). The
        init's pidfd is kept for :meth:`release`, which reaps the init where it became the trainer's child."""
        pidfd = init_pidfd(process.grpo_info_fd, process.pid)
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            select.select([pidfd], [], [], 5.0)  # readable once it has exited
            if getattr(process, "grpo_init_pidfd", None) is not None:
                os.close(process.grpo_init_pidfd)
            process.grpo_init_pidfd = pidfd
        kill_group(process)

    def release(self, process: subprocess.Popen) -> None:
        """After bwrap has been waited for: reap the sandbox's init if it became this process's child (the trainer
        is PID 1 of a container, or a subreaper; see :mod:`grpo_custom.rewards.sandbox.reaper`), close the fds."""
        pidfd = getattr(process, "grpo_init_pidfd", None)
        if pidfd is not None:
            process.grpo_init_pidfd = None
            reap_init(pidfd)
        os.close(process.grpo_info_fd)

    def cleanup(self) -> str | None:
        return None  # the tmpfs lived in the sandbox's mount namespace and went with it


class ProcessLevel:
    """Plain ``python -I -S`` subprocesses in host temporary directories (no OS isolation)."""

    guard = True

    def __init__(self, limits: SandboxLimits):
        self.limits = limits
        self.workdir = tempfile.mkdtemp(prefix="grpo_sandbox_")
        self.nproc = 0 if limits.max_processes == 1 else None  # RLIMIT_NPROC counts the host uid: 0 or nothing

    def workdir_for(self, role: str) -> str:
        path = os.path.join(self.workdir, role)
        os.makedirs(path, exist_ok=True)
        return path

    def popen(self, role: str, source: str, stdin: int, pass_fds: tuple[int, ...], stderr) -> subprocess.Popen:
        workdir = self.workdir_for(role)
        environment = dict(ENVIRONMENT, HOME=workdir, TMPDIR=workdir, PYTHONDONTWRITEBYTECODE="1")
        return subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", source], stdin=stdin,
                                stdout=subprocess.PIPE, stderr=stderr, pass_fds=pass_fds, cwd=workdir,
                                env=environment, start_new_session=True)

    def kill(self, process: subprocess.Popen) -> None:
        kill_group(process)

    def release(self, process: subprocess.Popen) -> None:
        pass

    def cleanup(self) -> str | None:
        return remove_tree(self.workdir)


def kill_group(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    for kill in (lambda: os.killpg(process.pid, signal.SIGKILL), process.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass


def make_level(level: str, limits: SandboxLimits) -> OsLevel | ProcessLevel:
    """The backend that starts processes at ``level`` ("os" or "process")."""
    return OsLevel(limits) if level == "os" else ProcessLevel(limits)
