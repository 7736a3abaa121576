"""Run one program: start its solution process, hand it to a pooled judge server, watch to the deadline.

The solution process runs ``solution_runner.py`` with the model's code, started fresh per program
(``launch.py``); the judge is a long-lived server from ``judge_pool.py`` running ``judge_runner.py``.
Two pipes join them: judge -> solution (requests), solution -> judge (replies); the trainer creates
both, gives the solution its ends at start and passes the judge's ends to the server with the
program, then closes its own copies. The verdict comes back on the server's socket, which the
solution process never holds. The trainer reads the solution's stdout/stderr and the server's
output (attributed to this program; the server flushes it before the verdict) and stops reading,
and kills the run, past ``output_bytes``. The run ends at the verdict, at the deadline, or when the
server ends; then the solution's process group is SIGKILLed (at OS isolation its sandbox's init,
so the kernel kills everything in its PID namespace), and the server goes back to the pool unless
the program ended any other way than with a well-formed verdict in time.
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from dataclasses import dataclass

from grpo_custom.rewards.sandbox import judge_pool
from grpo_custom.rewards.sandbox.launch import make_level, start_runner
from grpo_custom.rewards.sandbox.limits import MESSAGE_BYTES, SandboxLimits
from grpo_custom.rewards.sandbox.process_guard import GUARD_SOURCE, guard_config

_VERDICT_BYTES = 1 << 16
_DRAIN_SECONDS = 1.0


@dataclass
class RunOutcome:
    """Raw facts of one run, classified by ``verdict.py``."""

    verdict: dict | None
    solution_returncode: int | None  # None: still running when the run ended (then killed)
    judge_returncode: int | None  # None: the judge server was still running
    solution_stdout: bytes
    solution_stderr: bytes
    judge_output: bytes
    timed_out: bool
    output_exceeded: str | None  # "solution" or "judge"
    wall_time: float
    pid: int
    workdir: str | None
    cleanup_problem: str | None


def _parse_verdict(data: bytes) -> dict | None:
    if len(data) < 4:
        return None
    size = int.from_bytes(data[:4], "big")
    if len(data) < 4 + size:
        return None
    try:
        verdict = json.loads(data[4 : 4 + size].decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"passed": False, "reason": "judge: malformed verdict", "retire": True}
    if not (isinstance(verdict, dict) and isinstance(verdict.get("passed"), bool)) or len(data) != 4 + size:
        return {"passed": False, "reason": "judge: malformed verdict", "retire": True}
    return verdict


def _start_solution(backend, code: str, limits: SandboxLimits, request_r: int, response_w: int) -> subprocess.Popen:
    payload = {"code": code, "rlimits": limits.rlimits(backend.nproc), "request_fd": request_r,
               "response_fd": response_w, "message_bytes": MESSAGE_BYTES}
    if backend.guard:
        payload.update(guard=GUARD_SOURCE, guard_config=guard_config(backend.workdir_for("solution")))
    return start_runner(backend, "solution", payload, (request_r, response_w), subprocess.PIPE)


def run_pair(code: str, tests: str, limits: SandboxLimits, level: str) -> RunOutcome:
    """Run ``code`` (solution process) against ``tests`` (a judge server) at ``level`` ("os" or "process")."""
    backend = make_level(level, limits)
    start = time.monotonic()
    deadline = start + limits.timeout
    request_r, request_w = os.pipe()
    response_r, response_w = os.pipe()
    solution = server = None
    try:
        server = judge_pool.acquire(level, limits)
        solution = _start_solution(backend, code, limits, request_r, response_w)
        os.close(request_r)
        os.close(response_w)
        request_r = response_w = None
        for attempt in range(2):  # a server that ended while idle (say, killed from outside): one fresh one
            if server.send(tests, code, request_w, response_r, deadline - time.monotonic()):
                break
            judge_pool.retire(server)
            server = None
            if attempt == 0:
                server = judge_pool.acquire(level, limits)
    except BaseException:
        if solution is not None:
            backend.kill(solution)
            solution.wait()
            backend.release(solution)
        if server is not None:
            judge_pool.retire(server)
        backend.cleanup()
        raise
    finally:
        for fd in (request_r, request_w, response_r, response_w):
            if fd is not None:
                os.close(fd)
    try:
        outcome = _watch(backend, solution, server, limits, deadline)
    finally:
        backend.release(solution)
    cleanup_problem = backend.cleanup()
    return RunOutcome(**outcome, wall_time=time.monotonic() - start, pid=solution.pid, workdir=backend.workdir,
                      cleanup_problem=cleanup_problem)


def _watch(backend, solution: subprocess.Popen, server, limits: SandboxLimits, deadline: float) -> dict:
    streams = {solution.stdout.fileno(): "solution_stdout", solution.stderr.fileno(): "solution_stderr"}
    if server is not None:
        streams.update({server.output_fd: "judge_output", server.control.fileno(): "verdict"})
    buffers = {name: bytearray() for name in ("solution_stdout", "solution_stderr", "judge_output", "verdict")}
    totals = {"solution": 0, "judge": 0}
    selector = selectors.DefaultSelector()
    for fd in streams:
        if streams[fd] != "verdict":
            os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    verdict, timed_out, exceeded, verdict_closed = None, False, None, server is None

    def take(fd: int) -> bool:
        """Read once from ``fd``; False at end of file or when nothing is there."""
        nonlocal exceeded, verdict_closed
        name = streams[fd]
        try:
            data = server.control.recv(1 << 16) if name == "verdict" else os.read(fd, 1 << 16)
        except (BlockingIOError, TimeoutError):
            return False
        except OSError:
            data = b""
        if not data:
            selector.unregister(fd)
            verdict_closed = verdict_closed or name == "verdict"
            return False
        if name == "verdict":
            buffers[name] += data[: _VERDICT_BYTES - len(buffers[name])]
            return True
        owner = "judge" if name == "judge_output" else "solution"
        room = limits.output_bytes - totals[owner]
        totals[owner] += len(data)
        buffers[name] += data[: max(room, 0)]
        if totals[owner] > limits.output_bytes and exceeded is None:
            exceeded = owner
        return True

    try:
        if server is not None:
            server.control.settimeout(0.0)
        while verdict is None and exceeded is None and not verdict_closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                take(key.fd)
            verdict = _parse_verdict(bytes(buffers["verdict"]))
        if verdict is not None and verdict.get("solution_ended"):
            try:  # let the solution's own exit status arrive (it explains why it ended)
                solution.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        solution_returncode = solution.poll()
        backend.kill(solution)
        if server is not None and server.output_fd in selector.get_map():
            while exceeded is None and take(server.output_fd):  # all it printed before the verdict
                pass
        judge_returncode = None if server is None else server.process.poll()
        reuse = server is not None and verdict is not None and not (timed_out or exceeded or verdict_closed)
        for fd in [fd for fd in selector.get_map() if streams[fd] in ("judge_output", "verdict")]:
            selector.unregister(fd)
        if verdict is not None:
            reuse = reuse and verdict.pop("retire", True) is False
            cpu = verdict.pop("cpu", None)
            if server is not None and isinstance(cpu, (int, float)):
                server.cpu_used = float(cpu)
            elif reuse:
                reuse = False
        if server is not None:
            server.programs += 1
            judge_pool.release(server, reuse)
            if not reuse:
                judge_returncode = server.process.poll()
        try:
            solution.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        drain_end = time.monotonic() + _DRAIN_SECONDS
        while selector.get_map() and time.monotonic() < drain_end:
            for key, _ in selector.select(max(0.0, drain_end - time.monotonic())):
                take(key.fd)
    finally:
        selector.close()
        for stream in (solution.stdout, solution.stderr):
            stream.close()
    return {"verdict": verdict, "solution_returncode": solution_returncode, "judge_returncode": judge_returncode,
            "solution_stdout": bytes(buffers["solution_stdout"]), "solution_stderr": bytes(buffers["solution_stderr"]),
            "judge_output": bytes(buffers["judge_output"]), "timed_out": timed_out, "output_exceeded": exceeded}
