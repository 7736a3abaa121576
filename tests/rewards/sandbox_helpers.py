"""Shared helpers of the sandbox tests: OS-isolation skip marker and leftover-process scans (which leave out
exactly the pooled judge servers' processes: ``judge_pool.server_pids()`` and what runs under them)."""
from __future__ import annotations

import os

import pytest

from grpo_custom.rewards.sandbox import isolation_level, judge_pool

LEVEL, LEVEL_REASON = isolation_level()
requires_os_isolation = pytest.mark.skipif(
    LEVEL != "os", reason=f"this machine gives no OS isolation (user namespaces / bwrap): {LEVEL_REASON}"
)


def live_pids() -> set[int]:
    """Pids of the processes alive now (a /proc scan)."""
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _parent(pid: int) -> int:
    status = _read(f"/proc/{pid}/status").decode("utf-8", "replace")
    return int(next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "0"))


def pool_processes() -> set[int]:
    """The live judge servers of the pool and every process under them (their sandboxes' init and judge)."""
    servers = judge_pool.server_pids()
    found = set()
    for pid in live_pids():
        chain, current = [], pid
        while current > 1 and current not in servers and current not in found and len(chain) < 64:
            chain.append(current)
            current = _parent(current)
        if current in servers or current in found:
            found.update(chain)
            found.add(current)
    return found


def leftovers(before: set[int], nonce: str = "") -> list[str]:
    """New live processes since ``before`` that belong to a sandbox run: in another PID namespace than
    this test (a sandbox's), children of this test process, bwrap processes, or carrying ``nonce``;
    the pooled judge servers (which live on between programs by design) and their sandboxes excepted."""
    own_ns = os.readlink("/proc/self/ns/pid")
    found = []
    pool = pool_processes()
    for pid in sorted(live_pids() - before - pool):
        cmdline = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode("utf-8", "replace")
        status = _read(f"/proc/{pid}/status").decode("utf-8", "replace")
        if not status or "\nState:\tZ" in status:
            continue
        ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "")
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/pid")
        except OSError:
            continue
        if namespace != own_ns or ppid == str(os.getpid()) or "bwrap" in cmdline or (nonce and nonce in cmdline):
            found.append(f"{pid}: {cmdline[:200]}")
    return found
