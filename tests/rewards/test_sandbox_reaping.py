"""A trainer that is PID 1 (a container's entry point) keeps no zombie of the code sandbox.

bwrap's init (PID 1 of each sandbox) outlives bwrap and is handed to PID 1 of the trainer's namespace; when the
trainer is that PID 1, it must reap it (grpo_custom/rewards/sandbox/reaper.py). The test starts a trainer-like
process as PID 1 of a new PID namespace (``unshare --pid --fork --mount-proc``), runs the code reward's sandbox
several times (passing, failing, timed-out and crashing programs, plus the start-up probe and the judge pool's
shutdown) and scans ``/proc/*/status`` for processes in state Z.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rewards.sandbox_helpers import requires_os_isolation

ROOT = Path(__file__).resolve().parents[2]
RUNS = [  # (code, tests, timeout s, expected SandboxResult.reason up to its ':')
    ("def f(x):\n    return x + 1\n", "assert f(1) == 2\n", 10.0, "passed"),
    ("def f(x):\n    return x\n", "assert f(1) == 2\n", 10.0, "failed"),
    ("while True:\n    pass\n", "", 1.0, "timeout"),
    ("import os\nos.abort()\n", "", 10.0, "crashed"),  # killed by SIGABRT
    ("print('hi')\n", "", 10.0, "passed"),
    ("def f(x):\n    return x + 1\n", "assert f(1) == 2\n", 10.0, "passed"),
]
TRAINER = r"""
import glob, json, os, sys
from grpo_custom.rewards.sandbox import judge_pool, run_in_sandbox

def zombies():
    found = []
    for path in glob.glob("/proc/[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in open(path).read().splitlines() if ":" in line)
        except OSError:
            continue
        if fields["State"].strip().startswith("Z"):
            found.append([fields["Pid"].strip(), fields["Name"].strip(), fields["PPid"].strip()])
    return found

runs = json.loads(sys.argv[1])
reasons = [run_in_sandbox(code, tests, timeout=timeout).reason for code, tests, timeout, _ in runs]
after_runs = zombies()
judge_pool.close()
print(json.dumps({"pid": os.getpid(), "reasons": reasons, "after_runs": after_runs, "after_close": zombies()}))
"""


def _pid_namespace_works() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare(1) here"
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"unshare --pid --fork --mount-proc fails here: {done.stderr.strip()}"


@requires_os_isolation
def test_a_pid_1_trainer_reaps_every_sandbox_init():
    why_not = _pid_namespace_works()
    if why_not:
        pytest.skip(why_not)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", TRAINER, json.dumps(RUNS)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["pid"] == 1  # the situation of a container's entry point
    assert [reason.split(":")[0] for reason in result["reasons"]] == [run[3] for run in RUNS], result["reasons"]
    assert result["after_runs"] == [], f"zombies left by {len(RUNS)} sandbox runs: {result['after_runs']}"
    assert result["after_close"] == [], f"zombies left by the judge pool's shutdown: {result['after_close']}"
