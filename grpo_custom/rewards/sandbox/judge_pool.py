"""Long-lived judge servers, pooled: one judge process serves many programs, one after another.

Starting a judge process per program (an interpreter, and at level "os" a bubblewrap sandbox) was
most of a trivial program's CPU cost. A :class:`JudgeServer` is the same judge, started the same way
(``launch.py``: at "os" its own bwrap sandbox with ``bwrap_command``, the same seccomp filter and
``--die-with-parent``; at "process" a plain subprocess), that runs ``judge_runner.py``'s loop. Per
program the trainer sends it the tests and the solution's source, with the judge's ends of the two
solution pipes attached (``socket.send_fds``), on a Unix socket pair only the trainer and the server
hold; the verdict comes back on that socket, so the solution process (still started fresh per
program, in its own sandbox) never holds the verdict's channel.

Pool: idle servers are kept per level and per the limits fixed at a server's start (memory, disk,
open files, processes, CPU); :func:`acquire` takes an idle one or starts one, so there are as many
as concurrent workers, created lazily and reused across reward calls. Servers are started from one
long-lived thread (``--die-with-parent`` is tied to the thread that started bwrap, and reward calls
use short-lived worker threads). :func:`release` puts a server back, or retires it (kills it, its
sandbox with it) after :data:`PROGRAMS_PER_SERVER` programs and whenever anything unexpected
happened: a timeout, a malformed or missing verdict, end of file, output over the limit, the
server's own request (see ``judge_runner.py``). :func:`close` (also at interpreter exit) retires
all; :func:`server_pids` lists the host pids of the live servers (tests exclude exactly these). A
forked child of the trainer starts with an empty pool (and closes its copies of the parent's sockets).

Limits: the wall-time deadline is the trainer's, per program, as before (a server that times out is
killed). ``RLIMIT_CPU`` counts a process's whole life, so a server gets twice the per-program CPU
limit as its ``RLIMIT_CPU``, reports its CPU time with each verdict, and is retired once it has used
more than one per-program limit: every program starts with at least the per-program limit left.
The other rlimits (address space, file size, open files, processes) are set once, as before.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

from grpo_custom.rewards.sandbox.launch import make_level, start_runner
from grpo_custom.rewards.sandbox.limits import MESSAGE_BYTES, SandboxLimits

PROGRAMS_PER_SERVER = 64
IDLE_SERVERS_PER_KIND = 32


class JudgeServer:
    """One judge server process and the trainer's ends of its channels."""

    def __init__(self, level: str, limits: SandboxLimits):
        self.level, self.key, self.cpu_limit = level, pool_key(level, limits), limits.cpu_limit
        self.programs, self.cpu_used = 0, 0.0
        self.backend = make_level(level, limits)
        rlimits = limits.rlimits(self.backend.nproc)
        if "RLIMIT_CPU" in rlimits:
            rlimits["RLIMIT_CPU"] = [2 * self.cpu_limit, 2 * self.cpu_limit + 1]
        parent, child = socket.socketpair()
        payload = {"control_fd": child.fileno(), "rlimits": rlimits, "message_bytes": MESSAGE_BYTES}
        try:
            self.process = start_runner(self.backend, "judge", payload, (child.fileno(),), subprocess.STDOUT)
        except BaseException:
            parent.close()
            self.backend.cleanup()
            raise
        finally:
            child.close()
        self.control = parent
        self.output_fd = self.process.stdout.fileno()
        os.set_blocking(self.output_fd, False)
        self.closed = False

    def send(self, tests: str, solution: str, request_w: int, response_r: int, timeout: float) -> bool:
        """Hand the server one program and the judge's ends of its pipes; False if the server is gone."""
        body = json.dumps({"tests": tests, "solution": solution}).encode("utf-8")
        data = len(body).to_bytes(4, "big") + body
        try:
            self.control.settimeout(max(timeout, 0.01))
            sent = socket.send_fds(self.control, [data], [request_w, response_r])
            if sent < len(data):
                self.control.sendall(data[sent:])
        except OSError:
            return False
        return True

    def alive(self) -> bool:
        return not self.closed and self.process.poll() is None

    def kill(self) -> None:
        """Kill the server (and everything in its sandbox); wait for it; close the trainer's ends."""
        if self.closed:
            return
        self.closed = True
        self.backend.kill(self.process)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.backend.release(self.process)
        self.control.close()
        self.process.stdout.close()
        self.backend.cleanup()


def pool_key(level: str, limits: SandboxLimits) -> tuple:
    """Servers are interchangeable when these match (the rest of the limits is enforced per program)."""
    return (level, limits.memory_mb, limits.disk_mb, limits.open_files, limits.max_processes, limits.cpu_limit)


_lock = threading.Lock()
_idle: dict[tuple, list[JudgeServer]] = {}
_live: set[JudgeServer] = set()
_starter: ThreadPoolExecutor | None = None


def _start(level: str, limits: SandboxLimits) -> JudgeServer:
    global _starter
    with _lock:
        if _starter is None:
            _starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge-server-start")
        starter = _starter
    server = starter.submit(JudgeServer, level, limits).result()
    with _lock:
        _live.add(server)
    return server


def acquire(level: str, limits: SandboxLimits) -> JudgeServer:
    """An idle server for ``level`` and ``limits``, or a new one."""
    key = pool_key(level, limits)
    while True:
        with _lock:
            idle = _idle.get(key)
            server = idle.pop() if idle else None
        if server is None:
            return _start(level, limits)
        if server.alive():
            return server
        retire(server)


def release(server: JudgeServer, reuse: bool) -> None:
    """Put ``server`` back for the next program, or retire it (``reuse`` False, worn out, or gone)."""
    if (reuse and server.programs < PROGRAMS_PER_SERVER and server.cpu_used <= server.cpu_limit
            and server.alive()):
        with _lock:
            idle = _idle.setdefault(server.key, [])
            if len(idle) < IDLE_SERVERS_PER_KIND:
                idle.append(server)
                return
    retire(server)


def retire(server: JudgeServer) -> None:
    """Kill ``server`` and forget it."""
    with _lock:
        _live.discard(server)
        idle = _idle.get(server.key, [])
        if server in idle:
            idle.remove(server)
    server.kill()


def server_pids() -> set[int]:
    """Host pids of the live servers' own processes (bwrap, or the interpreter at level "process")."""
    with _lock:
        return {server.process.pid for server in _live}


def close() -> None:
    """Retire every server (idle ones; a server in use is retired when its program ends)."""
    with _lock:
        servers = [server for idle in _idle.values() for server in idle]
        _idle.clear()
    for server in servers:
        retire(server)


def _forget_after_fork() -> None:
    """In a forked child: the parent's servers are the parent's; close our copies of its ends, start empty."""
    global _lock, _starter
    for server in _live:
        server.closed = True
        for close_end in (server.control.close, server.process.stdout.close):
            try:
                close_end()
            except OSError:
                pass
    _live.clear()
    _idle.clear()
    _lock, _starter = threading.Lock(), None


atexit.register(close)
os.register_at_fork(after_in_child=_forget_after_fork)
