"""The pooled judge servers (judge_pool.py): reuse, retirement, per-program hygiene and output."""
import os

import pytest

from grpo_custom.rewards.sandbox import judge_pool, run_in_sandbox
from tests.rewards.sandbox_helpers import leftovers, live_pids, requires_os_isolation

CODE = "def f():\n    return 1\n"


@pytest.fixture
def servers(monkeypatch):
    """Start from an empty pool; record ``(server pid, reused)`` for every program; empty it afterwards."""
    judge_pool.close()
    used = []
    release = judge_pool.release

    def recording(server, reuse):
        used.append((server.process.pid, reuse))
        release(server, reuse)

    monkeypatch.setattr(judge_pool, "release", recording)
    yield used
    judge_pool.close()


def alive(pid):
    return os.path.exists(f"/proc/{pid}") and "\nState:\tZ" not in open(f"/proc/{pid}/status").read()


@requires_os_isolation
def test_a_server_is_reused_for_consecutive_programs(servers):
    before = live_pids()
    for _ in range(3):
        result = run_in_sandbox(CODE, "assert f() == 1")
        assert (result.passed, result.reason) == (True, "passed")
    assert [reused for _, reused in servers] == [True] * 3
    assert len({pid for pid, _ in servers}) == 1 and judge_pool.server_pids() == {servers[0][0]}
    assert leftovers(before) == []
    judge_pool.close()
    assert judge_pool.server_pids() == set() and not alive(servers[0][0])


def test_process_level_reuses_its_server_too(servers):
    for _ in range(2):
        assert run_in_sandbox(CODE, "assert f() == 1", isolation="process").passed
    assert len({pid for pid, _ in servers}) == 1


@requires_os_isolation
def test_a_server_is_retired_after_its_programs(servers, monkeypatch):
    monkeypatch.setattr(judge_pool, "PROGRAMS_PER_SERVER", 3)
    for _ in range(4):
        assert run_in_sandbox(CODE, "assert f() == 1").passed
    pids = [pid for pid, _ in servers]
    assert pids[0] == pids[1] == pids[2] != pids[3]
    assert not alive(pids[0]) and judge_pool.server_pids() == {pids[3]}


@requires_os_isolation
def test_a_hanging_test_kills_its_server_and_the_next_program_gets_a_fresh_one(servers):
    before = live_pids()
    assert run_in_sandbox(CODE, "assert f() == 1", timeout=2.0).passed
    result = run_in_sandbox(CODE, "while True:\n    pass", timeout=2.0)
    assert (result.passed, result.reason) == (False, "timeout")
    result = run_in_sandbox(CODE, "assert f() == 1", timeout=2.0)
    assert (result.passed, result.reason) == (True, "passed")
    wrong = run_in_sandbox("def f():\n    return 2\n", "assert f() == 1", timeout=2.0)
    assert (wrong.passed, wrong.reason) == (False, "failed: AssertionError")
    (first, _), (hung, reused), (fresh, _), (again, _) = servers
    assert first == hung and not reused and fresh != hung and again == fresh and not alive(hung)
    assert leftovers(before) == []


@requires_os_isolation
def test_state_of_one_program_does_not_reach_the_next(servers):
    first = run_in_sandbox(CODE, "leaked = 1\nimport builtins\nbuiltins.leaked_builtin = 2\nassert f() == 1")
    assert first.passed
    ended = run_in_sandbox("def f():\n    import os\n    os._exit(0)\n", "f()\nassert False")
    assert not ended.passed and ended.reason == "failed: exited before the tests finished"
    second = run_in_sandbox(CODE, "import builtins\nassert 'leaked' not in globals()\n"
                                  "assert not hasattr(builtins, 'leaked_builtin')\nassert f() == 1")
    assert (second.passed, second.reason) == (True, "passed")  # also: the judge's "solution ended" state was reset
    assert len({pid for pid, _ in servers}) == 1


@requires_os_isolation
def test_judge_output_is_captured_per_program(servers):
    one = run_in_sandbox(CODE, "print('one')\nassert f() == 1")
    two = run_in_sandbox(CODE, "import os, sys\nprint('two', file=sys.stderr)\nsys.stderr.flush()\n"
                               "os.write(1, b'raw\\n')\nassert f() == 1")
    assert one.judge_output == "one\n" and two.judge_output == "two\nraw\n"
    assert len({pid for pid, _ in servers}) == 1


@requires_os_isolation
@pytest.mark.parametrize(
    "tests, reason",
    [("raise SystemExit(3)", "failed: SystemExit: 3"),
     ("print('x' * 5000)", "output limit: the judge wrote more than the output_bytes limit"),
     ("import time\nstart = time.process_time()\nwhile time.process_time() - start < 1.2:\n    pass\nassert f() == 1",
      "passed")],
    ids=["base_exception", "output_over_the_limit", "cpu_budget_spent"],
)
def test_servers_are_retired_after_anything_unexpected(servers, tests, reason):
    result = run_in_sandbox(CODE, tests, output_bytes=1024, cpu_seconds=1)
    assert result.reason == reason
    after = run_in_sandbox(CODE, "assert f() == 1", output_bytes=1024, cpu_seconds=1)
    assert (after.passed, after.reason) == (True, "passed")
    (retired, _), (fresh, _) = servers
    assert retired != fresh and not alive(retired)
