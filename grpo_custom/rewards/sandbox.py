"""Run model-written Python code against a sample's tests in a sandboxed subprocess.

Layers (each one stops something different; none is a complete security boundary on its own):

* a separate ``python -I -S -B`` process (isolated mode: no user site, no ``PYTHON*`` variables,
  no site-packages: standard library only) in a new session, so ``os.killpg`` ends it and anything
  it started; a scrubbed environment (``PATH``, ``HOME``/``TMPDIR`` = its own directory);
* resource limits set by the child's runner before any model code runs: ``RLIMIT_AS`` (memory),
  ``RLIMIT_CPU``, ``RLIMIT_NPROC = 0`` (no new processes or threads; not enforced for root),
  ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no core files;
* an audit hook (:pep:`578`) that, on the first forbidden event, writes a marker to stderr and
  ends the process at once (``os._exit``, which model code cannot catch): process creation
  (``os.fork``, ``os.system``, ``os.exec``, ``os.posix_spawn``, ``subprocess.Popen``, importing
  ``_posixsubprocess``), signals to other processes, sockets, ``ctypes``, raising resource limits,
  heap walking, links, opening directories (``dir_fd`` paths could not be checked; this also
  stops ``shutil.rmtree`` and ``tempfile.TemporaryDirectory`` cleanup), writes outside the
  sandbox directory and reads outside it and the standard library;
* a fresh temporary working directory, removed afterwards, and a wall-clock timeout.

Code and tests reach the runner over stdin, never on disk, so model code cannot read the tests.
A run passes only when the process exits 0 *and* printed a per-run random token that the runner
writes after the tests ran, so ``sys.exit(0)`` / ``os._exit(0)`` before the tests does not pass.
Limits that remain: in-process tricks (objects whose ``__eq__`` is always True, frame
introspection) are not prevented; run untrusted code in a container or VM for real isolation.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from grpo_custom.rewards.builtin import completion_text, dataset_column

LANGUAGES = ("python",)
BLOCKED_EXIT_CODE = 86
BLOCKED_MARKER = "__GRPO_SANDBOX_BLOCKED__"
OUTPUT_LIMIT_CHARS = 20_000

# The runner executed by ``python -I -S -B -c``; argv: sandbox dir, memory MiB, CPU seconds, file-size MiB.
_RUNNER = r'''
import json, os, resource, sys

def _main():
    work = os.path.realpath(sys.argv[1])
    memory_mb, cpu_seconds, file_mb = (int(a) for a in sys.argv[2:5])
    payload = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    token = payload["token"].encode()
    write, exit_now, realpath, fspath = os.write, os._exit, os.path.realpath, os.fspath
    read_roots = tuple(realpath(p) for p in sys.path if p) + (work,)
    read_files = ("/dev/null", "/dev/urandom", "/dev/zero")
    for limits in (
        (resource.RLIMIT_AS, memory_mb * 2**20), (resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1),
        (resource.RLIMIT_FSIZE, file_mb * 2**20), (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 0),
    ):
        resource.setrlimit(limits[0], (limits[1], limits[-1]))
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
        write(2, ("\n%s %s%s\n" % (MARKER, event, detail)).encode("utf-8", "replace"))
        exit_now(BLOCKED_EXIT)

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
            if mode is None and not isinstance(path, int) and os.path.isdir(path):
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

    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    solution = compile(payload["code"], "<solution>", "exec")
    tests = compile(payload["tests"], "<tests>", "exec")
    del payload
    sys.addaudithook(hook)
    exec(solution, namespace)
    exec(tests, namespace)
    sys.stdout.flush()
    write(1, b"\n" + token + b"\n")

_main()
'''


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        passed: the code and tests ran to the end and the process exited 0.
        reason: ``"passed"``, ``"failed: <exception line>"`` (``AssertionError`` or early exit),
            ``"timeout"``, ``"memory"``, ``"blocked: <event> [detail]"``, ``"crashed: <returncode> [...]"``.
        returncode: the process exit status (negative: killed by that signal).
        stdout: the program's stdout (last ``OUTPUT_LIMIT_CHARS`` characters).
        stderr: the program's stderr (last ``OUTPUT_LIMIT_CHARS`` characters).
        wall_time: seconds from start to the end of the process.
        pid: the process id, also its process group and session id.
        workdir: the temporary directory it ran in (already removed).
    """

    passed: bool
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_time: float
    pid: int
    workdir: str


def extract_code(text: str) -> str:
    """The code in a completion: the last ```` ```python ```` (or ```` ```py ````) fenced block of ``text``,
    else the last plain ```` ``` ```` block, else the whole ``text``."""
    for pattern in (r"```(?:python3?|py)[ \t]*\n(.*?)```", r"```[ \t]*\n(.*?)```"):
        blocks = re.findall(pattern, text, flags=re.DOTALL)
        if blocks:
            return blocks[-1]
    return text


def _tail(path: str) -> str:
    """The last ``OUTPUT_LIMIT_CHARS`` characters of a text file (decoded with replacement)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 4 * OUTPUT_LIMIT_CHARS))
        return handle.read().decode("utf-8", "replace")[-OUTPUT_LIMIT_CHARS:]


def _remove_tree(path: str) -> None:
    """Remove ``path`` even if the sandboxed code made sub-directories unreadable (``chmod 000``)."""
    os.chmod(path, 0o700)
    for directory, subdirectories, _ in os.walk(path):
        for name in subdirectories:
            child = os.path.join(directory, name)
            if not os.path.islink(child):
                os.chmod(child, 0o700)
    shutil.rmtree(path)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group of ``process`` (the sandbox's session), ignoring an already empty group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reason(returncode: int, timed_out: bool, token_seen: bool, stderr: str) -> str:
    """Classify a finished run (see :class:`SandboxResult` ``reason``)."""
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    marker = stderr.rfind(BLOCKED_MARKER)
    if returncode == BLOCKED_EXIT_CODE and marker >= 0:
        return "blocked: " + stderr[marker + len(BLOCKED_MARKER) :].strip().splitlines()[0][:200]
    if returncode == 0:
        return "passed" if token_seen else "failed: exited before the tests finished"
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if "Traceback (most recent call last)" in stderr and last:
        if last.startswith("MemoryError"):
            return "memory"
        if last.startswith("AssertionError"):
            return "failed: " + last[:200]
        return f"crashed: {returncode} ({last[:200]})"
    if returncode < 0 and -returncode in signal.valid_signals():
        return f"crashed: {returncode} ({signal.Signals(-returncode).name})"
    return f"crashed: {returncode}"


def run_in_sandbox(
    code: str,
    tests: str = "",
    timeout: float = 5.0,
    memory_mb: int = 512,
    cpu_seconds: int | None = None,
    file_size_mb: int = 16,
) -> SandboxResult:
    """Run ``code`` then ``tests`` (Python source, e.g. ``assert`` lines) in one sandboxed process.

    Both run in one namespace (``__name__ == "solution"``, so ``if __name__ == "__main__"`` blocks
    do not run) inside a fresh temporary directory; see the module docstring for the limits.

    Args:
        code: the program.
        tests: test code run after ``code`` in the same namespace.
        timeout: wall-clock limit in seconds; the whole process group is killed at the limit.
        memory_mb: address-space limit (``RLIMIT_AS``) in MiB.
        cpu_seconds: CPU-time limit; default ``ceil(timeout) + 1``.
        file_size_mb: largest file (including stdout/stderr) the program may write, in MiB.
    """
    if not isinstance(code, str) or not isinstance(tests, str):
        raise TypeError(
            f"run_in_sandbox needs code and tests as str, got {type(code).__name__} and {type(tests).__name__}."
        )
    if not timeout > 0:
        raise ValueError(f"run_in_sandbox timeout must be > 0 seconds, got {timeout!r}.")
    if not memory_mb >= 32:
        raise ValueError(f"run_in_sandbox memory_mb must be >= 32 (the interpreter needs it), got {memory_mb!r}.")
    cpu_limit = math.ceil(timeout) + 1 if cpu_seconds is None else int(cpu_seconds)
    if cpu_limit < 1:
        raise ValueError(f"run_in_sandbox cpu_seconds must be >= 1, got {cpu_seconds!r}.")
    token = secrets.token_hex(16)
    runner = _RUNNER.replace("MARKER", repr(BLOCKED_MARKER)).replace("BLOCKED_EXIT", str(BLOCKED_EXIT_CODE))
    root = tempfile.mkdtemp(prefix="grpo_sandbox_")
    workdir = os.path.join(root, "work")
    os.mkdir(workdir)
    stdout_path, stderr_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")
    environment = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
                   "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-I", "-S", "-B", "-c", runner, workdir, str(memory_mb), str(cpu_limit),
               str(file_size_mb)]
    payload = json.dumps({"token": token, "code": code, "tests": tests}).encode()
    try:
        with open(stdout_path, "wb") as stdout_file, open(stderr_path, "wb") as stderr_file:
            start = time.monotonic()
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=stdout_file, stderr=stderr_file,
                                       cwd=workdir, env=environment, start_new_session=True, close_fds=True)
            timed_out = False
            try:
                process.communicate(payload, timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(process)
                process.communicate()
            wall_time = time.monotonic() - start
            _kill_group(process)
        stdout, stderr = _tail(stdout_path), _tail(stderr_path)
    finally:
        _remove_tree(root)
    token_seen = f"\n{token}\n" in stdout
    return SandboxResult(
        passed=process.returncode == 0 and token_seen and not timed_out,
        reason=_reason(process.returncode, timed_out, token_seen, stderr),
        returncode=process.returncode,
        stdout=stdout.replace(f"\n{token}\n", ""),
        stderr=stderr,
        wall_time=wall_time,
        pid=process.pid,
        workdir=workdir,
    )


def code_execution_reward(
    tests_column: str = "tests",
    timeout: float = 5.0,
    memory_mb: int = 512,
    cpu_seconds: int | None = None,
    max_workers: int | None = None,
    time_budget: float | None = None,
    language: str = "python",
) -> Callable:
    """Reward ``1.0`` if the completion's code passes its tests in the sandbox, else ``0.0`` (higher is better).

    The code is :func:`extract_code` of the completion; the tests are ``kwargs[tests_column]``
    (a string of Python, or a list of assert strings joined by newlines). Samples run in parallel
    (``max_workers`` threads, default ``min(4, batch size)``), each under :func:`run_in_sandbox`.
    With ``time_budget`` seconds for the whole batch, a sample's timeout is cut to the time left
    and samples not started in time score ``0.0`` with reason ``"time budget"``. A sample with
    empty tests scores ``None`` (cannot score) with reason ``"no tests"``.

    The reward function keeps the per-sample reasons of its last call in ``last_reasons`` and
    logs them as the completions-table column ``code_reason`` through ``log_extra`` when given.

    Args:
        tests_column: dataset column with the tests.
        timeout, memory_mb, cpu_seconds: per-sample limits (see :func:`run_in_sandbox`).
        max_workers: parallel sandboxes.
        time_budget: total seconds for one batch, or None for no budget.
        language: only ``"python"``.
    """
    if language not in LANGUAGES:
        raise ValueError(f"Unsupported code_execution_reward language {language!r}; valid: {', '.join(LANGUAGES)}.")
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"code_execution_reward max_workers must be >= 1, got {max_workers!r}.")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"code_execution_reward time_budget must be > 0 seconds, got {time_budget!r}.")

    def score(code: str, tests: str, deadline: float | None) -> tuple[float, str]:
        sample_timeout = timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0.05:
                return 0.0, "time budget"
            sample_timeout = min(timeout, left)
        result = run_in_sandbox(code, tests, timeout=sample_timeout, memory_mb=memory_mb, cpu_seconds=cpu_seconds)
        if result.reason == "timeout" and sample_timeout < timeout:
            return 0.0, "time budget"
        return (1.0 if result.passed else 0.0), result.reason

    def code_execution_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        all_tests = dataset_column(kwargs, tests_column, "code_execution_reward", len(completions))
        rewards: list[float | None] = [None] * len(completions)
        reasons = ["no tests"] * len(completions)
        jobs = {}
        for index, (completion, tests) in enumerate(zip(completions, all_tests)):
            if isinstance(tests, (list, tuple)) and all(isinstance(t, str) for t in tests):
                tests = "\n".join(tests)
            if not isinstance(tests, str):
                raise TypeError(
                    f"code_execution_reward: column {tests_column!r} at sample index {index} must be a string of "
                    f"Python tests or a list of them, got {type(tests).__name__}."
                )
            if tests.strip():
                jobs[index] = (extract_code(completion_text(completion, index)), tests)
        deadline = None if time_budget is None else time.monotonic() + time_budget
        workers = max_workers or min(4, max(1, len(jobs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
            futures = {index: pool.submit(score, code, tests, deadline) for index, (code, tests) in jobs.items()}
            for index, future in futures.items():
                rewards[index], reasons[index] = future.result()
        code_execution_reward.last_reasons = reasons
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):
            log_extra("code_reason", reasons)
        return rewards

    code_execution_reward.last_reasons = []
    return code_execution_reward
