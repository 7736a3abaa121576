"""Removing a program's host directory (``isolation="process"`` only) without ever raising into training.

At OS isolation a program writes only to a tmpfs in its own mount namespace, which the kernel frees
with the sandbox: nothing is left on the host to remove. At the process level the program worked in
a host directory it could have made hard to delete: read-only or unreadable sub-directories,
immutable or append-only files (``FS_IOC_SETFLAGS``, possible for a root trainer), chains deeper
than ``PATH_MAX`` or Python's recursion limit. :func:`remove_tree` works without recursion and with
short paths (every sub-directory is first moved up to the top directory), clears those flags, and
returns what it could not remove instead of raising; :func:`report_leftover` logs each leftover once.
"""
from __future__ import annotations

import fcntl
import logging
import os
import secrets
import struct
import threading

logger = logging.getLogger("grpo_custom.rewards.sandbox")

_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x00000010, 0x00000020
_reported: set[str] = set()
_reported_lock = threading.Lock()


def _clear_flags(fd: int) -> None:
    """Drop the immutable and append-only flags of an open file or directory (best effort)."""
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, b"\0" * 4))[0]
        if flags & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags & ~(_FS_IMMUTABLE_FL | _FS_APPEND_FL)))
    except OSError:
        pass


def _open_dir(name: str, dir_fd: int | None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)


def _empty_directory(fd: int, top_fd: int, pending: list[str], counter: list) -> None:
    """Unlink the non-directories in ``fd``; move its sub-directories up into ``top_fd`` (queued in ``pending``)."""
    _clear_flags(fd)
    os.fchmod(fd, 0o700)
    for entry in list(os.scandir(fd)):
        if entry.is_dir(follow_symlinks=False):
            counter[0] += 1
            new_name = f".grpo_rm_{counter[1]}_{counter[0]}"
            try:
                child = _open_dir(entry.name, fd)
                try:
                    _clear_flags(child)
                    os.fchmod(child, 0o700)
                finally:
                    os.close(child)
            except OSError:
                pass
            os.rename(entry.name, new_name, src_dir_fd=fd, dst_dir_fd=top_fd)
            pending.append(new_name)
        else:
            if entry.is_file(follow_symlinks=False):
                try:
                    file_fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
                    try:
                        _clear_flags(file_fd)
                    finally:
                        os.close(file_fd)
                except OSError:
                    pass
            os.unlink(entry.name, dir_fd=fd)


def remove_tree(path: str) -> str | None:
    """Remove directory ``path`` and everything in it; None when done, else why not (never raises)."""
    try:
        top_fd = _open_dir(path, None)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot open {path}: {exc}"
    try:
        pending, counter = [], [0, secrets.token_hex(4)]
        _empty_directory(top_fd, top_fd, pending, counter)
        while pending:
            name = pending.pop()
            fd = _open_dir(name, top_fd)
            try:
                _empty_directory(fd, top_fd, pending, counter)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=top_fd)
    except (OSError, ValueError) as exc:
        return f"could not remove everything in {path}: {exc}"
    finally:
        os.close(top_fd)
    try:
        parent_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.rmdir(os.path.basename(path), dir_fd=parent_fd)
        finally:
            os.close(parent_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"could not remove {path}: {exc}"
    return None


def report_leftover(problem: str | None) -> None:
    """Log ``problem`` (from :func:`remove_tree`) once per distinct message; nothing for None."""
    if problem is None:
        return
    with _reported_lock:
        if problem in _reported:
            return
        _reported.add(problem)
    logger.warning("code-execution sandbox left files behind: %s", problem)

