"""Refuse operator files that someone other than root could have written.

hooks.yaml names commands that run as root; config.yaml and clients.yaml
decide which services are stopped and how GPUs are reset. If another user can
write such a file, or replace it through its directory, they can act as root,
so the daemon refuses to read it (as sshd's StrictModes and sudo do for their
files). Allowed owners are root and the effective user, so an unprivileged
user can still run ``migmanagerd plan`` against their own copy.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from migmanagerd.errors import UsageError

_UNSAFE_BITS = stat.S_IWGRP | stat.S_IWOTH


def check_trusted(path: str | Path, what: str) -> None:
    """Raise ``UsageError`` unless ``path`` and the directory holding it are
    owned by root (or the effective uid) and not writable by group or others.

    A symlink is followed: the link's own directory and the file it points to
    (and that file's directory) are all checked, since any of them lets a
    writer change what is read.
    """
    given = Path(path)
    try:
        real = given.resolve(strict=True)
    except FileNotFoundError:
        raise UsageError(f"{what} {given}: file not found") from None
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"{what} {given}: cannot check it: {_reason(exc)}") from None
    euid = os.geteuid()
    targets = [(real, "file")]
    for directory in dict.fromkeys([given.absolute().parent, real.parent]):
        targets.append((directory, "directory"))
    for target, kind in targets:
        try:
            st = os.stat(target)
        except OSError as exc:
            raise UsageError(f"{what} {given}: cannot check {target}: {_reason(exc)}") from None
        problem = trust_problem(st.st_uid, st.st_mode, euid)
        if problem is not None:
            raise UsageError(_message(what, given, target, kind, st.st_uid, st.st_mode, problem))


def trust_problem(uid: int, mode: int, euid: int) -> str | None:
    """Why a file or directory with this owner and mode is not trusted, if it isn't.

    Returns ``"owner"`` or ``"writable"``; pure so it can be tested for every
    owner without root.
    """
    if uid not in (0, euid):
        return "owner"
    if stat.S_IMODE(mode) & _UNSAFE_BITS:
        return "writable"
    return None


def _message(what: str, given: Path, target: Path, kind: str, uid: int, mode: int, problem: str) -> str:
    if kind == "file":
        shown = os.path.normpath(given.absolute())
        subject = "it" if str(target) == shown else f"its target {target}"
    else:
        subject = f"its directory {target}"
    if problem == "owner":
        what_is_wrong = f"is owned by {_user(uid)}, not root or the current user (mode {stat.S_IMODE(mode):04o})"
        fix = f"chown root: {target}"
    else:
        what_is_wrong = f"is writable by group or others (owner {_user(uid)}, mode {stat.S_IMODE(mode):04o})"
        fix = f"chmod go-w {target}"
    return f"refusing {what} {given}: {subject} {what_is_wrong}; fix: {fix}"


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
