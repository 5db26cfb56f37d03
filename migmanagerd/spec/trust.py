"""Refuse operator files that someone other than root could have written.

hooks.yaml and integrations.yaml name commands that run as root (and files
root writes); config.yaml and clients.yaml decide which services are stopped
and how GPUs are reset. If another user can
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


# The kernel's own limit on symlinks followed in one path lookup.
MAX_SYMLINKS = 40
# Operator files are kilobytes; reading is bounded so a trusted-but-wrong path
# (a device, a log file) cannot hold the boot.
MAX_FILE_BYTES = 16 * 1024 * 1024


class FileAbsent(UsageError):
    """The path (no symlink involved) does not exist: callers decide whether
    an absent optional file is fine. A dangling or looping link is never this."""


def check_trusted(path: str | Path, what: str) -> None:
    """Raise ``UsageError`` unless ``path`` is a file only root (or the
    effective uid) could have put there; see ``read_trusted``."""
    read_trusted(path, what)


def read_trusted(path: str | Path, what: str) -> str:
    """The text of ``path``, read from the one descriptor that was checked.

    Like sshd's StrictModes, every component from ``/`` is walked with
    ``openat(O_NOFOLLOW)`` from the descriptor of its checked parent: each
    directory, each symlink (and then every component of its target) and the
    file itself must be owned by root or the effective uid and not writable by
    group or others. A root-owned sticky directory (``/tmp``) may be an
    ancestor, since only an entry's owner can replace it there, but not the
    file's own directory. Nothing is looked up by name twice, so no link can
    be flipped between the check and the read. A missing path raises
    ``FileAbsent``; a dangling or looping link, or a file that is not regular,
    raises ``UsageError``.
    """
    given = Path(path)
    walker = _Walker(given, what)
    fd = walker.open_file()
    try:
        return _read_fd(fd, given, what)
    finally:
        os.close(fd)


def read_trusted_optional(path: str | Path, what: str) -> str | None:
    """``read_trusted``, with None for a path that does not exist at all."""
    try:
        return read_trusted(path, what)
    except FileAbsent:
        return None


def _read_fd(fd: int, given: Path, what: str) -> str:
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError as exc:
            raise UsageError(f"{what} {given}: cannot read it: {_reason(exc)}") from None
        if not chunk:
            break
        total += len(chunk)
        if total > MAX_FILE_BYTES:
            raise UsageError(f"{what} {given}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; refusing to read it")
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {given}: cannot read it: not UTF-8 ({exc.reason} at byte {exc.start})") from None


class _Walker:
    """One path lookup done by hand, checking as it goes (see read_trusted)."""

    def __init__(self, given: Path, what: str) -> None:
        self.given = given
        self.what = what
        self.euid = os.geteuid()
        self.links = 0
        # (descriptor, path as walked) of the physical ancestors, "/" first
        self.stack: list[tuple[int, str]] = []

    def open_file(self) -> int:
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.stack = [(root, "/")]
        try:
            self._check_dir(root, "/")
            return self._walk(list(Path(os.path.abspath(self.given)).parts[1:]))
        finally:
            for fd, _ in self.stack:
                os.close(fd)

    def _walk(self, parts: list[str]) -> int:
        pending = list(reversed(parts))
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(self.stack) > 1:
                    os.close(self.stack.pop()[0])
                continue
            shown = os.path.join(self.stack[-1][1], name)
            fd = self._open_path(name, shown)
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                self._follow(name, shown, st, pending)
            elif stat.S_ISDIR(st.st_mode):
                self.stack.append((fd, shown))
                self._check_dir(fd, shown)
            elif not pending:
                try:
                    return self._open_regular(name, shown, st)
                finally:
                    os.close(fd)
            else:
                os.close(fd)
                raise UsageError(f"{self.what} {self.given}: cannot check {shown}: not a directory")
        raise UsageError(f"{self.what} {self.given}: {self.stack[-1][1]} is a directory, not a file")

    def _open_path(self, name: str, shown: str) -> int:
        try:
            return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.stack[-1][0])
        except FileNotFoundError:
            if self.links:
                raise UsageError(f"{self.what} {self.given}: it is a dangling symlink ({shown} does not exist)") from None
            raise FileAbsent(f"{self.what} {self.given}: file not found") from None
        except OSError as exc:
            raise UsageError(f"{self.what} {self.given}: cannot check {shown}: {_reason(exc)}") from None

    def _follow(self, name: str, shown: str, st: os.stat_result, pending: list[str]) -> None:
        self.links += 1
        if self.links > MAX_SYMLINKS:
            raise UsageError(f"{self.what} {self.given}: too many levels of symbolic links (a symlink loop?)")
        self._require(st, shown, "symlink")
        parent_fd = self.stack[-1][0]
        try:
            target = os.readlink(name, dir_fd=parent_fd)
        except OSError as exc:
            raise UsageError(f"{self.what} {self.given}: cannot read symlink {shown}: {_reason(exc)}") from None
        if target.startswith("/"):
            while len(self.stack) > 1:
                os.close(self.stack.pop()[0])
        pending.extend(reversed(Path(target).parts[1:] if target.startswith("/") else Path(target).parts))

    def _open_regular(self, name: str, shown: str, st: os.stat_result) -> int:
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{self.what} {self.given}: {shown} is not a regular file")
        self._require(st, shown, "file")
        parent_fd, parent_path = self.stack[-1]
        # the file's own directory gets no sticky-bit allowance: anyone may
        # create (and so pre-empt) a name in a /tmp-like directory
        self._require(os.fstat(parent_fd), parent_path, "directory")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=self.stack[-1][0])
        except OSError as exc:
            raise UsageError(f"{self.what} {self.given}: cannot open {shown}: {_reason(exc)}") from None
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            # only its (trusted) directory's owner can do that; still, what
            # was checked is not what would be read
            os.close(fd)
            raise UsageError(f"{self.what} {self.given}: {shown} was replaced while it was being checked")
        return fd

    def _check_dir(self, fd: int, shown: str) -> None:
        st = os.fstat(fd)
        sticky_root = st.st_uid == 0 and bool(st.st_mode & stat.S_ISVTX)
        if sticky_root:
            return  # /tmp-like: only an entry's owner may replace it, and entries are checked
        self._require(st, shown, "directory")

    def _require(self, st: os.stat_result, shown: str, kind: str) -> None:
        problem = trust_problem(st.st_uid, st.st_mode, self.euid)
        if kind == "symlink" and problem == "writable":
            problem = None  # a symlink's own mode bits are always 0777 and mean nothing
        if problem is not None:
            raise UsageError(_message(self.what, self.given, Path(shown), kind, st.st_uid, st.st_mode, problem))


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
    elif kind == "symlink":
        subject = f"the symlink {target} on its path"
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
