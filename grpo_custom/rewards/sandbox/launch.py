"""Start one run's two processes at an isolation level, watch their pipes to a deadline, end them.

The solution process runs ``solution_runner.py`` with the model's code; the judge process runs
``judge_runner.py`` with the tests. Three pipes join them: judge -> solution (requests),
solution -> judge (replies), judge -> trainer (the verdict; the solution process never holds it).
Each program gets its compiled runner and its payload on stdin from a memfd, never on disk. The trainer reads
stdout/stderr of both and stops reading (and kills the run) past ``output_bytes``. The run ends at
the verdict, at the deadline, or when the judge exits; then both process groups are SIGKILLed.
At OS isolation each process is a bwrap sandbox in its own PID namespace: killing bwrap (and its
group) kills the namespace's init, which makes the kernel kill everything left inside it.
"""
from __future__ import annotations

import functools
import json
import marshal
import os
import select
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from grpo_custom.rewards.sandbox.bwrap import ENVIRONMENT, WORKDIR, bwrap_command, os_backend, seccomp_memfd
from grpo_custom.rewards.sandbox.cleanup import remove_tree
from grpo_custom.rewards.sandbox.limits import MESSAGE_BYTES, SandboxLimits
from grpo_custom.rewards.sandbox.process_guard import GUARD_SOURCE, guard_config

_HERE = Path(__file__).resolve().parent
_VERDICT_BYTES = 1 << 16
_DRAIN_SECONDS = 1.0


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


@dataclass
class RunOutcome:
    """Raw facts of one run, classified by ``verdict.py``."""

    verdict: dict | None
    solution_returncode: int | None  # None: still running when the run ended (then killed)
    judge_returncode: int | None
    solution_stdout: bytes
    solution_stderr: bytes
    judge_output: bytes
    timed_out: bool
    output_exceeded: str | None  # "solution" or "judge"
    wall_time: float
    pid: int
    workdir: str | None
    cleanup_problem: str | None


def _memfd(data: bytes, name: str) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _OsLevel:
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

    @staticmethod
    def _init_pidfd(process: subprocess.Popen) -> int | None:
        """A pidfd of the sandbox's init (bwrap's reaper, PID 1 of its namespace; pid from ``--info-fd``),
        checked to still be that process, or None when it is gone."""
        try:
            pid = int(json.loads(os.read(process.grpo_info_fd, 1 << 16).decode("utf-8"))["child-pid"])
            pidfd = os.pidfd_open(pid)
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
        try:
            with open(f"/proc/{pid}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle.read().splitlines() if ":" in line)
            if (fields["Name"].strip() == "bwrap" and fields["NSpid"].split()[-1] == "1"
                    and int(fields["PPid"]) in (process.pid, 1)):
                return pidfd
        except (OSError, KeyError, ValueError):
            pass
        os.close(pidfd)
        return None

    def kill(self, process: subprocess.Popen) -> None:
        """Kill the sandbox's init, which makes the kernel kill everything in its PID namespace, and wait
        until it has exited; then bwrap itself (bwrap exits with its program and leaves the init to die
        of ``--die-with-parent``; waiting here makes "nothing of the run is left" hold on return)."""
        pidfd = self._init_pidfd(process)
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            select.select([pidfd], [], [], 5.0)  # readable once it has exited
            os.close(pidfd)
        _kill(process)

    def release(self, process: subprocess.Popen) -> None:
        os.close(process.grpo_info_fd)

    def cleanup(self) -> str | None:
        return None  # the tmpfs lived in the sandbox's mount namespace and went with it


class _ProcessLevel:
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
        _kill(process)

    def release(self, process: subprocess.Popen) -> None:
        pass

    def cleanup(self) -> str | None:
        return remove_tree(self.workdir)


def _kill(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    for kill in (lambda: os.killpg(process.pid, signal.SIGKILL), process.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass


def _parse_verdict(data: bytes) -> dict | None:
    if len(data) < 4:
        return None
    size = int.from_bytes(data[:4], "big")
    if len(data) < 4 + size:
        return None
    try:
        verdict = json.loads(data[4 : 4 + size].decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"passed": False, "reason": "judge: malformed verdict"}
    if not (isinstance(verdict, dict) and isinstance(verdict.get("passed"), bool)):
        return {"passed": False, "reason": "judge: malformed verdict"}
    return verdict


def run_pair(code: str, tests: str, limits: SandboxLimits, level: str) -> RunOutcome:
    """Run ``code`` (solution process) against ``tests`` (judge process) at ``level`` ("os" or "process")."""
    backend = _OsLevel(limits) if level == "os" else _ProcessLevel(limits)
    start = time.monotonic()
    deadline = start + limits.timeout
    request_r, request_w = os.pipe()
    response_r, response_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    rlimits = limits.rlimits(backend.nproc)
    solution = judge = None
    to_close = [request_r, request_w, response_r, response_w, verdict_w]
    try:
        solution_payload = {"code": code, "rlimits": rlimits, "request_fd": request_r, "response_fd": response_w,
                            "message_bytes": MESSAGE_BYTES}
        if backend.guard:
            solution_payload.update(guard=GUARD_SOURCE, guard_config=guard_config(backend.workdir_for("solution")))
        judge_payload = {"tests": tests, "solution": code, "rlimits": rlimits, "request_fd": request_w,
                         "response_fd": response_r, "verdict_fd": verdict_w, "message_bytes": MESSAGE_BYTES}
        for role, payload, fds in (("solution", solution_payload, (request_r, response_w)),
                                   ("judge", judge_payload, (request_w, response_r, verdict_w))):
            stdin = _memfd(program_code(role + "_runner.py") + json.dumps(payload).encode("utf-8"), "grpo-sandbox-" + role)
            try:
                stderr = subprocess.PIPE if role == "solution" else subprocess.STDOUT
                process = backend.popen(role, BOOTSTRAP, stdin, fds, stderr)
            finally:
                os.close(stdin)
            if role == "solution":
                solution = process
            else:
                judge = process
    except BaseException:
        if solution is not None:
            backend.kill(solution)
            solution.wait()
            backend.release(solution)
        os.close(verdict_r)
        backend.cleanup()
        raise
    finally:
        for fd in to_close:
            os.close(fd)
    try:
        outcome = _watch(backend, solution, judge, verdict_r, limits, deadline)
    finally:
        backend.release(solution)
        backend.release(judge)
    cleanup_problem = backend.cleanup()
    return RunOutcome(**outcome, wall_time=time.monotonic() - start, pid=solution.pid, workdir=backend.workdir,
                      cleanup_problem=cleanup_problem)


def _watch(backend, solution: subprocess.Popen, judge: subprocess.Popen, verdict_r: int, limits: SandboxLimits,
           deadline: float) -> dict:
    streams = {solution.stdout.fileno(): "solution_stdout", solution.stderr.fileno(): "solution_stderr",
               judge.stdout.fileno(): "judge_output", verdict_r: "verdict"}
    buffers = {name: bytearray() for name in streams.values()}
    totals = {"solution": 0, "judge": 0}
    selector = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    verdict, timed_out, exceeded, verdict_closed = None, False, None, False

    def read_ready(timeout: float) -> None:
        nonlocal exceeded, verdict_closed
        for key, _ in selector.select(timeout):
            try:
                data = os.read(key.fd, 1 << 16)
            except BlockingIOError:
                continue
            name = streams[key.fd]
            if not data:
                selector.unregister(key.fd)
                verdict_closed = verdict_closed or name == "verdict"
                continue
            if name == "verdict":
                buffers[name] += data[: _VERDICT_BYTES - len(buffers[name])]
                continue
            owner = "judge" if name == "judge_output" else "solution"
            room = limits.output_bytes - totals[owner]
            totals[owner] += len(data)
            buffers[name] += data[: max(room, 0)]
            if totals[owner] > limits.output_bytes and exceeded is None:
                exceeded = owner

    try:
        while verdict is None and exceeded is None and not verdict_closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            read_ready(remaining)
            verdict = _parse_verdict(bytes(buffers["verdict"]))
        if verdict is not None and verdict.get("solution_ended"):
            try:  # let the solution's own exit status arrive (it explains why it ended)
                solution.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        solution_returncode, judge_returncode = solution.poll(), judge.poll()
        backend.kill(solution)
        backend.kill(judge)
        for process in (solution, judge):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        drain_end = time.monotonic() + _DRAIN_SECONDS
        while selector.get_map() and time.monotonic() < drain_end:
            read_ready(max(0.0, drain_end - time.monotonic()))
        if verdict is None:
            verdict = _parse_verdict(bytes(buffers["verdict"]))
    finally:
        selector.close()
        for stream in (solution.stdout, solution.stderr, judge.stdout):
            stream.close()
        os.close(verdict_r)
    return {"verdict": verdict, "solution_returncode": solution_returncode, "judge_returncode": judge_returncode,
            "solution_stdout": bytes(buffers["solution_stdout"]), "solution_stderr": bytes(buffers["solution_stderr"]),
            "judge_output": bytes(buffers["judge_output"]), "timed_out": timed_out, "output_exceeded": exceeded}
