"""Tests of grpo_custom.rewards.sandbox: outcomes, hostile programs, cleanup, batch parallelism and budget."""
import os
import time

import pytest

from grpo_custom.rewards.sandbox import code_execution_reward, extract_code, run_in_sandbox

OUTSIDE_FILE = "/tmp/owned_by_sandbox_test"


def process_group_members(pgid):
    """Pids of live processes whose process group is ``pgid`` (psutil if installed, else a /proc scan)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    pids = [p.pid for p in psutil.process_iter()] if psutil else [int(d) for d in os.listdir("/proc") if d.isdigit()]
    members = []
    for pid in pids:
        try:
            if os.getpgid(pid) == pgid:
                members.append(pid)
        except ProcessLookupError:
            continue
    return members


def run_clean(code, tests="", **limits):
    """run_in_sandbox, then check that nothing of the run is left: processes, directories."""
    result = run_in_sandbox(code, tests, **limits)
    assert process_group_members(result.pid) == []
    assert not os.path.exists(os.path.dirname(result.workdir))
    return result


def test_correct_program_passes():
    result = run_clean("def add(a, b):\n    return a + b\nprint('hello')\n", "assert add(2, 3) == 5")
    assert (result.passed, result.reason, result.returncode) == (True, "passed", 0)
    assert result.stdout.strip() == "hello"


def test_wrong_program_fails_with_the_assertion():
    result = run_clean("def add(a, b):\n    return a - b\n", "assert add(2, 3) == 5, 'add(2, 3) should be 5'")
    assert not result.passed
    assert result.reason == "failed: AssertionError: add(2, 3) should be 5"


def test_timeout_is_enforced_on_wall_time():
    result = run_clean("while True:\n    pass\n", timeout=1.0)
    assert (result.passed, result.reason) == (False, "timeout")
    assert 1.0 <= result.wall_time < 3.0


@pytest.mark.parametrize(
    "code, reason",
    [
        ("raise RuntimeError('boom')", "crashed: 1 (RuntimeError: boom)"),
        ("import os\nos._exit(3)", "crashed: 3"),
        ("def f(:\n  pass", "crashed: 1 (SyntaxError: invalid syntax)"),
        ("import sys\nsys.exit(0)", "failed: exited before the tests finished"),
        ("import os\nos._exit(0)", "failed: exited before the tests finished"),
    ],
    ids=["raise", "exit_code", "syntax", "sys_exit_0_before_tests", "os_exit_0_before_tests"],
)
def test_crashes_and_early_exits_score_zero(code, reason):
    result = run_clean(code, "assert False, 'tests must not be skipped'")
    assert (result.passed, result.reason) == (False, reason)


@pytest.mark.parametrize(
    "code, reason",
    [
        ("import os\nwhile True:\n    os.fork()", "blocked: os.fork"),
        ("import socket\nsocket.socket().connect(('example.com', 80))", "blocked: socket.__new__"),
        ("import subprocess\nsubprocess.run(['ls'])", "blocked: import _posixsubprocess"),
        ("import os\nos.system('ls')", "blocked: os.system"),
        ("import os\nos.kill(os.getppid(), 0)", "blocked: os.kill"),
        ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "blocked: resource.setrlimit"),
        ("print(open('/etc/passwd').read())", "blocked: open read '/etc/passwd'"),
        ("import os\nos.listdir('/')", "blocked: os.listdir '/'"),
        ("import os\nos.remove('/tmp')", "blocked: os.remove '/tmp'"),
        ("import os\nos.symlink('/etc/passwd', 'link')", "blocked: os.symlink"),
    ],
    ids=["fork_bomb", "socket", "subprocess", "system", "kill_parent", "raise_limit", "read_outside",
         "list_outside", "remove_outside", "symlink"],
)
def test_hostile_programs_are_blocked(code, reason):
    result = run_clean(code, "pass")
    assert not result.passed
    assert result.reason == reason


def test_write_outside_the_sandbox_is_blocked():
    if os.path.exists(OUTSIDE_FILE):
        os.remove(OUTSIDE_FILE)
    result = run_clean(f"open({OUTSIDE_FILE!r}, 'w').write('owned')", "pass")
    assert (result.passed, result.reason) == (False, f"blocked: open write {OUTSIDE_FILE!r}")
    assert not os.path.exists(OUTSIDE_FILE)


def test_memory_bomb_hits_the_memory_limit():
    result = run_clean("data = bytearray(10**10)", "pass", memory_mb=256)
    assert (result.passed, result.reason) == (False, "memory")


def test_files_inside_the_sandbox_work_and_the_tests_are_not_on_disk():
    code = "import os\nlisting = sorted(os.listdir('.'))\nopen('notes.txt', 'w').write('hi')\n"
    tests = "assert listing == [], listing\nassert open('notes.txt').read() == 'hi'"
    result = run_clean(code, tests)
    assert result.reason == "passed"


def test_extract_code_prefers_the_last_python_block():
    text = "Try:\n```python\nx = 1\n```\nBetter:\n```py\nx = 2\n```\n```\nplain\n```"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("no fence\n```\nx = 3\n```") == "x = 3\n"
    assert extract_code("x = 4") == "x = 4"


def fenced(code):
    return [{"role": "assistant", "content": f"Here you go:\n```python\n{code}\n```"}]


def test_code_execution_reward_batch_reasons_and_log_extra():
    logged = {}
    reward = code_execution_reward(timeout=2.0, max_workers=2)
    completions = [
        fenced("def sq(x):\n    return x * x"),
        fenced("def sq(x):\n    return x + x"),
        "def sq(x): return x**2",
        fenced("import os\nos.fork()"),
    ]
    tests = ["assert sq(3) == 9", ["assert sq(3) == 9", "assert sq(4) == 16"], "", "assert sq(3) == 9"]
    rewards = reward(prompts=["p"] * 4, completions=completions, tests=tests,
                     log_extra=lambda column, values: logged.update({column: values}))
    assert rewards == [1.0, 0.0, None, 0.0]
    assert reward.last_reasons == ["passed", "failed: AssertionError", "no tests", "blocked: os.fork"]
    assert logged == {"code_reason": reward.last_reasons}
    assert reward.__name__ == "code_execution_reward"


def test_code_execution_reward_runs_in_parallel():
    reward = code_execution_reward(max_workers=4)
    start = time.monotonic()
    rewards = reward(prompts=["p"] * 4, completions=["import time\ntime.sleep(1.0)"] * 4, tests=["pass"] * 4)
    elapsed = time.monotonic() - start
    assert rewards == [1.0] * 4
    assert elapsed < 3.0  # run one after another they would take >= 4 s


def test_code_execution_reward_time_budget():
    reward = code_execution_reward(timeout=10.0, max_workers=1, time_budget=1.5)
    start = time.monotonic()
    rewards = reward(prompts=["p"] * 3, completions=["x = 1", "while True:\n    pass", "x = 1"], tests=["pass"] * 3)
    elapsed = time.monotonic() - start
    assert rewards == [1.0, 0.0, 0.0]
    assert reward.last_reasons == ["passed", "time budget", "time budget"]
    assert elapsed < 3.0


def test_code_execution_reward_errors():
    with pytest.raises(ValueError, match="needs the dataset column 'tests'"):
        code_execution_reward()(prompts=["p"], completions=["x = 1"], solution=["1"])
    with pytest.raises(TypeError, match="sample index 0 must be a string"):
        code_execution_reward()(prompts=["p"], completions=["x = 1"], tests=[3])
    with pytest.raises(ValueError, match="language 'rust'.*python"):
        code_execution_reward(language="rust")
    with pytest.raises(ValueError, match="timeout"):
        run_in_sandbox("x = 1", timeout=0)
