"""The ``isolation="process"`` level's in-process guard: an audit hook (:pep:`578`) for the solution process.

Only used where the operating system cannot isolate programs and the user opted in. Its source
(``GUARD_SOURCE``) is executed by ``solution_runner.py`` before the model's code, with a ``GUARD``
dict (work directory, marker, exit code). On the first forbidden event it writes a marker to stderr
and ends the process: process creation, signals to other processes, sockets, ``ctypes``, raising
resource limits, heap walking, links, directory descriptors, writes outside the work directory and
reads outside it and the standard library. A guard inside the interpreter it guards can be switched
off from inside (frames, builtins), so this level contains mistakes, not an adversary: the model's
code can escape it and then act with the trainer's privileges and forge the judge's results.
"""
from __future__ import annotations

BLOCKED_EXIT_CODE = 86
BLOCKED_MARKER = "__GRPO_SANDBOX_BLOCKED__"

GUARD_SOURCE = r'''
import os, sys

def _install(config):
    work = os.path.realpath(config["work"])
    marker, blocked_exit = config["marker"], config["exit_code"]
    write, exit_now, realpath, fspath, isdir = os.write, os._exit, os.path.realpath, os.fspath, os.path.isdir
    read_roots = tuple(realpath(p) for p in sys.path if p) + (work,)
    read_files = ("/dev/null", "/dev/urandom", "/dev/zero")
    blocked_events = {
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "os.link", "os.symlink", "sys.addaudithook",
    }
    blocked_prefixes = ("socket.", "ctypes.", "_posixsubprocess")
    blocked_imports = {"_posixsubprocess", "_ctypes"}
    mutating = {"os.mkdir": 1, "os.rmdir": 1, "os.remove": 1, "os.rename": 2, "os.chmod": 1, "os.chown": 1,
                "os.truncate": 1, "os.utime": 1, "shutil.rmtree": 1, "os.chflags": 1, "os.setxattr": 1,
                "os.removexattr": 1}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path, roots):
        if isinstance(path, int):
            return True
        full = realpath(os.fsdecode(path))
        return any(full == root or full.startswith(root + os.sep) for root in roots)

    def block(event, detail):
        write(2, ("\n%s %s%s\n" % (marker, event, detail)).encode("utf-8", "replace"))
        exit_now(blocked_exit)

    def hook(event, args):
        if event in blocked_events or event.startswith(blocked_prefixes):
            block(event, "")
        elif event == "import" and args[0] in blocked_imports:
            block(event, " " + args[0])
        elif event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if writing and not inside(path, (work,)):
                block(event, " write %r" % (path,))
            if mode is None and not isinstance(path, int) and isdir(path):
                block(event, " directory %r (no directory descriptors: dir_fd paths are not checked)" % (path,))
            if not writing and not inside(path, read_roots) and fspath(path) not in read_files:
                block(event, " read %r" % (path,))
        elif event in ("os.listdir", "os.scandir", "glob.glob") and args and args[0] is not None:
            if not inside(args[0], read_roots):
                block(event, " %r" % (args[0],))
        elif event in mutating:
            for path in args[: mutating[event]]:
                if not inside(path, (work,)):
                    block(event, " %r" % (path,))

    sys.addaudithook(hook)

_install(GUARD)
'''


def guard_config(workdir: str) -> dict:
    """The ``GUARD`` dict the guard source reads."""
    return {"work": workdir, "marker": BLOCKED_MARKER, "exit_code": BLOCKED_EXIT_CODE}
