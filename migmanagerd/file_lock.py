"""flock(2) on a lock file, waited for at most a given time.

The kernel drops an flock when its holder's last descriptor closes, so a
killed holder never leaves a file locked. Every lock of the daemon (the run
lock, the state directory's writer lock, the simulator's node lock) goes
through ``acquire``; each caller decides what a timeout means for it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.05


class LockTimeout(Exception):
    """The lock was still held by someone else when the wait ran out."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__(f"{path}: still locked after {timeout_s:g}s")
        self.path = path
        self.timeout_s = timeout_s


def acquire(
    path: Path,
    timeout_s: float | None,
    *,
    mode: int = 0o600,
    on_wait: Callable[[int], None] | None = None,
) -> int:
    """Open ``path`` (created with ``mode``) and hold an exclusive flock on it.

    Returns the descriptor; closing it releases the lock. ``timeout_s=None``
    waits as long as it takes. ``on_wait(fd)`` is called once, when the lock
    is found held (so a caller can say who it waits for). Raises
    ``LockTimeout`` when the wait runs out, ``OSError`` when the file cannot
    be opened or locked.
    """
    # O_NOFOLLOW: a symlink planted where a lock belongs must not make root
    # create or truncate its target (issue 14 item 4); it fails with ELOOP
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd
        deadline = time.monotonic() + timeout_s
        told = False
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                raise LockTimeout(path, timeout_s)
            if not told and on_wait is not None:
                told = True
                on_wait(fd)
            time.sleep(POLL_S)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True
