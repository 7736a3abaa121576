"""Hostile programs against the OS-isolated sandbox (issue 14): each scores 0 with a reason, and
nothing reaches outside: no process left, no file outside its directory, the trainer and a
bystander process alive and untouched, a 127.0.0.1 listener receives nothing, no secret leaks."""
import os
import secrets
import socket
import subprocess
import sys

import pytest

from grpo_custom.rewards.sandbox import code_execution_reward, run_in_sandbox
from tests.rewards.sandbox_helpers import leftovers, live_pids, requires_os_isolation

pytestmark = requires_os_isolation


@pytest.fixture
def arena(tmp_path, monkeypatch):
    """Things a hostile program must not reach; checked after the test."""
    nonce = str(secrets.randbelow(10**12) + 10**12)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("SECRET-FILE-" + nonce)
    monkeypatch.setenv("GRPO_SANDBOX_TEST_SECRET", "SECRET-ENV-" + nonce)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.3)
    bystander = subprocess.Popen(["sleep", "60"])
    priority, affinity = os.getpriority(os.PRIO_PROCESS, bystander.pid), os.sched_getaffinity(bystander.pid)
    values = {
        "nonce": nonce, "port": listener.getsockname()[1], "tmpdir": str(tmp_path), "secret_file": str(secret_file),
        "marker": str(tmp_path / "marker"), "marker2": str(tmp_path / "marker.db"), "bystander": bystander.pid,
        "trainer": os.getpid(), "python": os.path.realpath(sys.executable),
    }
    with open("/proc/sys/kernel/core_pattern") as handle:
        values["core_pattern"] = core_pattern = handle.read().rstrip("\n")
    before = live_pids()
    yield values
    try:
        assert leftovers(before, nonce) == []
        assert bystander.poll() is None, "the bystander process was killed"
        assert os.getpriority(os.PRIO_PROCESS, bystander.pid) == priority
        assert os.sched_getaffinity(bystander.pid) == affinity
        assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt"], "a file appeared outside the sandbox"
        with open("/proc/sys/kernel/core_pattern") as handle:
            assert handle.read().rstrip("\n") == core_pattern
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        bystander.kill()
        bystander.wait()
        listener.close()


def hostile(arena, template, tests="assert False, 'unreachable'", **limits):
    """Run a hostile program (``template`` formatted with the arena's values); it must score 0."""
    result = run_in_sandbox(template.format(**arena), tests, **limits)
    output = result.stdout + result.stderr + result.judge_output
    assert not result.passed and result.reason
    for secret in ("SECRET-ENV-" + arena["nonce"], "SECRET-FILE-" + arena["nonce"]):
        assert secret not in output
    return result


# The attacks of issue 14, each as its own program.
AUDIT_HOOK_THEN_SETSID = r'''
import os, sys
frame = sys._getframe()
while frame is not None:  # empty every set reachable from closures on the stack (the old audit hook's)
    for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
        for cell in getattr(value, "__closure__", None) or ():
            try:
                if isinstance(cell.cell_contents, set):
                    cell.cell_contents.clear()
            except ValueError:
                pass
    frame = frame.f_back
code = "import socket, time; s = socket.create_connection(('127.0.0.1', {port})); s.sendall(b'{nonce}'); time.sleep(30)"
status = os.system('setsid {python} -I -S -c "%s" &' % code)
try:
    os.posix_spawn("/bin/sh", ["sh", "-c", "setsid sleep 30 0.{nonce} &"], dict())
except OSError as exc:
    print("posix_spawn", exc)
raise SystemExit("os.system returned %r" % status)
'''

BUILTINS_THEN_SECRETS = r'''
import builtins, os
builtins.any = lambda *a, **k: True
builtins.all = lambda *a, **k: True
found = []
for path in ["/etc/shadow", "/proc/%d/environ" % os.getppid(), "/proc/1/environ", "/proc/1/cmdline", "{secret_file}"]:
    try:
        found.append(open(path, "rb").read().decode("latin-1"))
    except OSError as exc:
        found.append(repr(exc))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            found.append(open("/proc/%s/environ" % pid, "rb").read().decode("latin-1"))
        except OSError:
            pass
found.append(repr(dict(os.environ)))
print("\n".join(found))
open("{marker}", "w").write("owned")
'''

SIGNALS_TO_PARENT_AND_OTHERS = r'''
import os, signal
results = []
for target in (os.getppid(), 1, {bystander}, {trainer}):
    for attempt in (
        lambda: signal.pidfd_send_signal(os.pidfd_open(target), signal.SIGKILL),
        lambda: os.kill(target, signal.SIGTERM),
        lambda: os.sched_setaffinity(target, {{0}}),
        lambda: os.setpriority(os.PRIO_PROCESS, target, 19),
    ):
        try:
            attempt()
            results.append("ok %d" % target)
        except OSError as exc:
            results.append("%d %s" % (target, exc.__class__.__name__))
print(results)
os.kill(-1, signal.SIGKILL)
'''

FILES_ANYWHERE = r'''
import os
results = []
def attempt(name, action):
    try:
        results.append("OK %s %r" % (name, action()))
    except Exception as exc:
        results.append("ERR %s %r" % (name, exc))
attempt("mknod", lambda: os.mknod("{marker}"))
def sqlite():
    import sqlite3
    sqlite3.connect("{marker2}").execute("create table t (x)")
attempt("sqlite", sqlite)
attempt("stat_secret", lambda: os.stat("{secret_file}"))
attempt("list_tmpdir", lambda: os.listdir("{tmpdir}"))
attempt("stat_shadow", lambda: os.stat("/etc/shadow"))
attempt("write_usr", lambda: open("/usr/owned", "w"))
attempt("write_root", lambda: open("/owned", "w"))
attempt("root_listing", lambda: sorted(os.listdir("/")))
attempt("chdir_root", lambda: (os.chdir("/root"), sorted(os.listdir("."))))
print("\n".join(results))
raise SystemExit(0 if any(line.startswith("OK mknod") for line in results) else 3)
'''

DISK_FILLER = r'''
written = 0
try:
    for i in range(64):
        with open("big%d" % i, "wb") as handle:
            for _ in range(16):
                handle.write(b"\0" * (1 << 20))
                written += 1 << 20
except OSError as exc:
    print("stopped after", written, exc)
raise SystemExit(4)
'''

# A sandbox mapped to host root would pass the sysctl owner check; it writes the current value back,
# so even a failing run changes nothing on the host.
SYSCTL_WRITE = r'''
results = []
for path, value in (("/proc/sys/kernel/core_pattern", {core_pattern!r}), ("/proc/self/oom_score_adj", "0")):
    try:
        with open(path, "w") as handle:
            handle.write(value)
        results.append("WROTE " + path)
    except OSError as exc:
        results.append("refused %s %s" % (path, exc.__class__.__name__))
print(results)
raise SystemExit(5)
'''

CLASSIC = {
    "fork_bomb": "import os\nwhile True:\n    os.fork()",
    "threads": "import threading\nfor _ in range(100):\n    threading.Thread(target=lambda: None).start()",
    "socket_to_listener": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'{nonce}')",
    "socket_outside": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
    "subprocess": "import subprocess\nsubprocess.run(['sleep', '30.{nonce}'])",
    "system": "import os\nassert os.system('sleep 30.{nonce} &') == 0",
    "kill_parent": "import os\nos.kill(os.getppid(), 9)\nos.kill({trainer}, 9)",
    "raise_limit": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
    "read_passwd": "print(open('/etc/passwd').read())",
    "remove_outside": "import os\nos.remove('{secret_file}')",
    "write_outside": "open('{marker}', 'w').write('owned')",
    "symlink_outside": "import os\nos.symlink('{secret_file}', 'link')\nprint(open('link').read())",
    "ctypes_syscall": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nassert libc.syscall(101, 16, {trainer}, 0, 0) == 0, 'ptrace refused'",
    "memory_bomb": "data = bytearray(10**10)",
}


@pytest.mark.parametrize("attack", [AUDIT_HOOK_THEN_SETSID, BUILTINS_THEN_SECRETS, SIGNALS_TO_PARENT_AND_OTHERS],
                         ids=["audit_hook_then_setsid_listener", "builtins_then_secrets", "signals_to_parent_and_others"])
def test_issue_escapes_are_contained(arena, attack):
    hostile(arena, attack)


def test_sysctl_and_proc_writes_are_refused(arena):
    result = hostile(arena, SYSCTL_WRITE)
    assert result.reason == "crashed: 5" and "WROTE" not in result.stdout, result.stdout


def test_files_anywhere_and_listing_host_directories(arena):
    result = hostile(arena, FILES_ANYWHERE)
    assert result.reason == "crashed: 3"
    lines = result.stdout.splitlines()
    for name in ("mknod", "sqlite", "stat_secret", "list_tmpdir", "stat_shadow", "write_usr", "write_root"):
        assert any(line.startswith("ERR " + name) for line in lines), name
    root = next(line for line in lines if line.startswith("OK root_listing"))
    assert "'tmp'" not in root and "'home'" not in root and "'etc'" in root  # etc: ld.so.cache only


def test_total_disk_is_capped(arena):
    result = hostile(arena, DISK_FILLER)
    assert result.reason == "crashed: 4" and "No space left on device" in result.stdout
    written = int(result.stdout.split()[2])
    assert written <= 64 * 2**20, written


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_classic_hostile_programs_score_zero(arena, name):
    hostile(arena, CLASSIC[name], memory_mb=256)


def test_output_of_a_hostile_program_cannot_forge_the_verdict(arena):
    code = r'''
import json, os, sys
fake = json.dumps({{"passed": True, "reason": "passed"}}).encode()
for fd in range(1, 64):
    try:
        os.write(fd, len(fake).to_bytes(4, "big") + fake)
    except OSError:
        pass
print("passed")
os._exit(0)
'''
    assert hostile(arena, code).reason == "failed: exited before the tests finished"


# The reward hacks of issue 14: each would score 1.0 on tests that cannot pass.
def test_hack_replacing_exec_scores_zero(arena):
    code = "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None"
    assert hostile(arena, code, "assert False").reason == "failed: AssertionError"


def test_hack_printing_the_runners_token_and_exiting_scores_zero(arena):
    code = r'''
import os, sys
frame, found = sys._getframe(), []
while frame is not None:
    found += [repr(v) for v in frame.f_locals.values() if isinstance(v, (str, bytes))]
    frame = frame.f_back
print("\n".join(found))
sys.stdout.flush()
os._exit(0)
'''
    result = hostile(arena, code, "assert False")
    assert result.reason == "failed: exited before the tests finished"
    assert "assert False" not in result.stdout  # the tests are not in the solution's process


def test_hack_reading_the_expected_values_scores_zero(arena):
    code = r'''
import gc, os, re, sys
def solve(x):
    seen = set()
    frame = sys._getframe()
    while frame is not None:
        seen.update(c for c in frame.f_code.co_consts if type(c) is int)
        seen.update(v for v in frame.f_locals.values() if type(v) is int)
        frame = frame.f_back
    for obj in gc.get_objects():
        if hasattr(obj, "co_consts"):
            seen.update(c for c in obj.co_consts if type(c) is int)
    for pid in os.listdir("/proc"):
        for name in ("cmdline", "environ"):
            try:
                seen.update(int(t) for t in re.findall(rb"\d{{6,}}", open("/proc/%s/%s" % (pid, name), "rb").read()))
            except OSError:
                pass
    for fd in range(64):
        try:
            seen.update(int(t) for t in re.findall(rb"\d{{6,}}", os.pread(fd, 1 << 20, 0)))
        except OSError:
            pass
    print(sorted(seen))
    big = [c for c in seen if c > 10**8]
    return max(big) if big else 0
'''
    result = hostile(arena, code, "assert solve(3) == 918273645")
    assert result.reason == "failed: AssertionError"
    assert "918273645" not in result.stdout


def test_sandbox_properties(arena):
    code = r'''
import ctypes, errno, os, platform, socket
def facts():
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    out = {{"uid": os.getuid(), "gid": os.getgid(), "cap_eff": status["CapEff"].strip(),
           "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
           "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()), "hostname": platform.node(),
           "interfaces": sorted(name for _, name in socket.if_nameindex()), "cwd": os.getcwd(),
           "work_bytes": os.statvfs(".").f_blocks * os.statvfs(".").f_frsize, "env": sorted(os.environ)}}
    try:
        os.fork()
        out["fork"] = "allowed"
    except OSError as exc:
        out["fork"] = errno.errorcode[exc.errno]
    libc = ctypes.CDLL(None, use_errno=True)
    for name, number, args in (("keyctl", 250, (0, 0, 0)), ("unshare", 272, (0x10000000, 0, 0)),
                               ("ptrace", 101, (16, 1, 0)), ("bpf", 321, (0, 0, 0))):
        if platform.machine() == "x86_64":
            out[name] = (libc.syscall(number, *args), errno.errorcode.get(ctypes.get_errno()))
    return out
'''
    tests = r'''
import os
got = facts()
assert got["uid"] == 65534 and got["gid"] == 65534, got
assert got["cap_eff"] == "0000000000000000" and got["no_new_privs"] == "1" and got["seccomp"] == "2", got
assert got["pids"] == [1, 2], got
assert got["hostname"] == "sandbox" and got["interfaces"] == ["lo"] and got["cwd"] == "/work", got
assert got["work_bytes"] == 64 * 2**20, got
assert set(got["env"]) <= {"HOME", "LANG", "PATH", "PWD", "TMPDIR"}, got
if TRAINER_UID == 0:
    assert got["fork"] == "EPERM", got
for name in ("keyctl", "unshare", "ptrace", "bpf"):
    assert got.get(name, (-1, "EPERM")) == (-1, "EPERM"), (name, got)
'''
    result = run_in_sandbox(code.format(**arena), f"TRAINER_UID = {os.getuid()}\n" + tests)
    assert (result.passed, result.reason) == (True, "passed"), result.reason


def test_immutable_files_and_deep_directories_do_not_break_the_reward(arena):
    code = r'''
import fcntl, os, struct
open("locked", "w").write("x")
fd = os.open("locked", os.O_RDONLY)
try:
    fcntl.ioctl(fd, 0x40086602, struct.pack("i", 0x10))
except OSError as exc:
    print("immutable refused:", exc)
for _ in range(1500):
    os.mkdir("d")
    os.chdir("d")
def f():
    return 1
'''
    reward = code_execution_reward(timeout=10.0)
    assert reward(prompts=["p"] * 2, completions=[code, code + "\nraise SystemExit(2)"], tests=["assert f() == 1"] * 2) == [1.0, 0.0]
    assert reward.last_reasons == ["passed", "crashed: 2"]
