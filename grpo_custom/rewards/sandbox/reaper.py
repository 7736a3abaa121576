"""The sandbox's init process: find it, and reap it when it has become the trainer's child.

bwrap forks an init (PID 1 of the sandbox's PID namespace, the namespace's reaper) that runs the
program. When the program ends, bwrap exits with its status at once and leaves the init to finish
(``--die-with-parent`` kills it); the kernel then hands the init to the nearest child subreaper or to
PID 1 of the trainer's namespace. On a host that is systemd or init, which reaps it. When the trainer
itself is PID 1 (``docker run ... python train.py``, Kubernetes, Colab-like containers) or a child
subreaper, the init becomes the trainer's child, and nothing in Python waits for it: one zombie per
program run. :func:`init_pidfd` opens a pidfd of the init (pid from bwrap's ``--info-fd``), checked to
be that process; :func:`reap_init` waits for it to exit and reaps it when it is the trainer's child
(``waitid(P_PIDFD)``; any other parent, bwrap or the real init, reaps it itself). Only the sandbox's own
init is waited for: the trainer's other children keep their exit statuses for whoever waits for them.
"""
from __future__ import annotations

import json
import os
import select


def init_pidfd(info_fd: int, bwrap_pid: int) -> int | None:
    """A pidfd of the sandbox's init named by what bwrap wrote to ``info_fd`` (``{"child-pid": N}``), checked to
    be a ``bwrap`` process that is PID 1 of its namespace and a child of bwrap (``bwrap_pid``), of this process
    (a subreaper) or of PID 1; None when nothing was written, or the process is gone or is another one."""
    try:
        pid = int(json.loads(os.read(info_fd, 1 << 16).decode("utf-8"))["child-pid"])
        pidfd = os.pidfd_open(pid)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    try:
        with open(f"/proc/{pid}/status") as handle:
            fields = dict(line.split(":", 1) for line in handle.read().splitlines() if ":" in line)
        if (fields["Name"].strip() == "bwrap" and fields["NSpid"].split()[-1] == "1"
                and int(fields["PPid"]) in (bwrap_pid, os.getpid(), 1)):
            return pidfd
    except (OSError, KeyError, ValueError):
        pass
    os.close(pidfd)
    return None


def reap_init(pidfd: int, timeout: float = 5.0) -> bool:
    """Wait up to ``timeout`` seconds for the init of ``pidfd`` to exit, reap it if it is this process's child,
    and close ``pidfd``. Call it after bwrap itself has been waited for (bwrap's exit is what hands the init
    over). True when this call reaped it."""
    try:
        select.select([pidfd], [], [], timeout)  # readable once the process has exited
        try:
            return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is not None
        except ChildProcessError:  # not our child: bwrap or the real init reaps it
            return False
        except OSError:
            return False
    finally:
        os.close(pidfd)
