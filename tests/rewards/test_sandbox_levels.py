"""Isolation levels: "auto"/"os" refuse without OS isolation; "process" works and warns on every call;
clean-up of a process-level directory never raises."""
import fcntl
import logging
import os
import struct

import pytest

from grpo_custom.rewards import sandbox
from grpo_custom.rewards.sandbox import (SandboxUnavailableError, code_execution_reward, isolation_level,
                                         run_in_sandbox)
from grpo_custom.rewards.sandbox import bwrap as sandbox_bwrap
from grpo_custom.rewards.sandbox.cleanup import remove_tree, report_leftover

LOGGER = "grpo_custom.rewards.sandbox"


@pytest.fixture
def no_bwrap(monkeypatch):
    """Simulate a machine without OS isolation: the bwrap lookup points at a missing file."""
    monkeypatch.setattr(sandbox_bwrap, "BWRAP", "/nonexistent/bwrap")
    yield
    sandbox_bwrap._probe.cache_clear()


def test_auto_and_os_refuse_without_os_isolation_and_say_how_to_opt_in(no_bwrap):
    level, reason = isolation_level(refresh=True)
    assert level == "process" and "/nonexistent/bwrap" in reason
    for isolation in ("auto", "os"):
        with pytest.raises(SandboxUnavailableError, match=r"(?s)/nonexistent/bwrap.*isolation='process'"):
            code_execution_reward(isolation=isolation)
        with pytest.raises(SandboxUnavailableError, match="needs OS isolation"):
            run_in_sandbox("x = 1", isolation=isolation)


def test_process_level_works_and_warns_on_every_call(no_bwrap, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    reward = code_execution_reward(isolation="process", max_workers=2)
    completions = ["def sq(x):\n    return x * x", "def sq(x):\n    return x + x"]
    for call in range(2):
        assert reward(prompts=["p"] * 2, completions=completions, tests=["assert sq(3) == 9"] * 2) == [1.0, 0.0]
        warnings = [r for r in caplog.records if "isolation='process'" in r.getMessage()]
        assert len(warnings) == call + 1
    assert reward.isolation == "process" and reward.last_reasons == ["passed", "failed: AssertionError"]


@pytest.mark.parametrize(
    "code, reason",
    [
        ("import os\nwhile True:\n    os.fork()", "blocked: os.fork"),
        ("import os\nos.system('ls')", "blocked: os.system"),
        ("print(open('/etc/passwd').read())", "blocked: open read '/etc/passwd'"),
        ("import builtins\nbuiltins.exec = lambda *a, **k: None", "failed: AssertionError"),
    ],
    ids=["fork", "system", "read_outside", "exec_hack"],
)
def test_process_level_keeps_the_guard_and_the_judge(no_bwrap, code, reason):
    result = run_in_sandbox(code, "assert False", isolation="process")
    assert (result.passed, result.reason, result.isolation) == (False, reason, "process")
    assert not os.path.exists(result.workdir)


def test_process_level_cleans_up_immutable_files_and_deep_directories(no_bwrap):
    code = (
        "import fcntl, os, struct\nopen('locked', 'w').write('x')\nfd = os.open('locked', os.O_RDONLY)\n"
        "try:\n    fcntl.ioctl(fd, 0x40086602, struct.pack('i', 0x10))\nexcept OSError as exc:\n    print(exc)\n"
        "os.mkdir('ro')\nos.chmod('ro', 0)\n"
        "for _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\ndef f():\n    return 1\n"
    )
    result = run_in_sandbox(code, "assert f() == 1", isolation="process", timeout=20.0)
    assert (result.passed, result.reason) == (True, "passed")
    assert not os.path.exists(result.workdir)


def test_remove_tree_never_raises_and_reports_once(tmp_path, caplog):
    top = tmp_path / "work"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1200):  # deeper than PATH_MAX and the recursion limit
        os.mkdir("dddddddd", dir_fd=fd)
        inner = os.open("dddddddd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.fchmod(fd, 0)
    os.close(fd)
    locked = top / "locked"
    locked.write_text("x")
    fd = os.open(locked, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0x40086602, struct.pack("i", 0x10))  # immutable, where the file system and uid allow
    except OSError:
        pass
    finally:
        os.close(fd)
    assert remove_tree(str(top)) is None and not top.exists()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(3):
        report_leftover("could not remove /x: EPERM")
    report_leftover(None)
    assert len(caplog.records) == 1


def test_public_names_are_importable():
    from grpo_custom.rewards import SandboxResult, code_execution_reward as reward, run_in_sandbox as run

    assert reward is sandbox.code_execution_reward and run is sandbox.run_in_sandbox
    assert SandboxResult is sandbox.SandboxResult and callable(sandbox.extract_code)


def test_root_trainer_drops_bwrap_to_uid_65534_where_it_can(monkeypatch):
    """With an interpreter uid 65534 can reach (the system one), a root trainer's sandboxes run as host uid
    65534, and max_processes is enforced by RLIMIT_NPROC (here the trainer's own Python may sit under /root)."""
    system_python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None)
    if os.getuid() != 0 or system_python is None or isolation_level()[0] != "os":
        pytest.skip("needs a root trainer, OS isolation and a system Python")
    monkeypatch.setattr(sandbox_bwrap, "interpreter", lambda: (os.path.realpath(system_python), []))
    backend, reason = sandbox_bwrap.os_backend()
    if backend is None or backend.host_uid is None:
        pytest.skip(f"bwrap cannot run as uid 65534 with {system_python} here: {reason}")
    assert backend.host_uid == 65534 and not backend.deny_process_creation
    code = (
        "import os, time\n"
        "def children():\n    made = 0\n    try:\n        for _ in range(10):\n"
        "            if os.fork() == 0:\n                time.sleep(5)\n                os._exit(0)\n"
        "            made += 1\n    except OSError:\n        pass\n    return made\n"
    )
    result = run_in_sandbox(code, "assert children() == 2", max_processes=3)
    assert (result.passed, result.reason) == (True, "passed"), result.reason
    result = run_in_sandbox(code, "assert children() == 0")
    assert (result.passed, result.reason) == (True, "passed"), result.reason
