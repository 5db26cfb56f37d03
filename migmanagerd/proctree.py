"""Run a command as root with a time bound, and on timeout kill everything it
started: hooks, ``scontrol`` and ``cdi.command``.

A process group is not enough: a ``setsid`` daemon leaves it, and a double
fork reparents to PID 1. So each child is tagged with a unique environment
variable (inherited by every descendant that does not scrub its environment)
and, while it runs, this process is a child subreaper (prctl(2)), so orphans
are reparented to us instead of PID 1 and stay findable by parent PID. On
timeout the whole set (same process group or session, tagged, or a
descendant) gets SIGTERM, then SIGKILL, and the caller is told truthfully
which PIDs, if any, were left running.

The unit's cgroup would be the exact answer, but without ``Delegate=`` a
service may not create cgroups of its own; the tag and subreaper need nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migmanagerd.log import get_logger

log = get_logger("proctree")

TAG_ENV = "MIGMANAGERD_CHILD_TAG"
TERM_GRACE_S = 5.0
_KILL_ROUNDS = 5
_PR_SET_CHILD_SUBREAPER = 36
_PROC = Path("/proc")


def new_tag() -> str:
    return uuid.uuid4().hex


def tagged_env(env: Mapping[str, str] | None, tag: str) -> dict[str, str]:
    base = dict(os.environ if env is None else env)
    base[TAG_ENV] = tag
    return base


def become_subreaper() -> bool:
    """Make orphaned descendants our children (Linux >= 3.4); False if not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class TreeKill:
    killed: tuple[int, ...]
    left: tuple[int, ...]

    def describe(self) -> str:
        text = f"killed {len(self.killed)} process(es) it started"
        if self.killed:
            text += f" (PID {', '.join(map(str, self.killed))})"
        if self.left:
            text += f"; {len(self.left)} could not be killed and may still run: PID {', '.join(map(str, self.left))}"
        return text


def _stat_fields(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) from /proc/PID/stat, or None if it is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[2]), int(rest[3])


def _has_tag(pid: int, needle: bytes) -> bool:
    try:
        return needle in (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return False


def members(tag: str, leader: int) -> set[int]:
    """Live (not zombie) processes of the tree started as ``leader`` with ``tag``."""
    needle = f"{TAG_ENV}={tag}\0".encode()
    me = os.getpid()
    table: dict[int, tuple[str, int, int, int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                table[int(entry.name)] = fields
    found = {
        pid for pid, (_state, _ppid, pgrp, sid) in table.items()
        if pid == leader or pgrp == leader or sid == leader or _has_tag(pid, needle)
    }
    grew = True
    while grew:  # descendants of anything found (reparented to us as subreaper, or not yet orphaned)
        new = {pid for pid, (_s, ppid, _g, _sid) in table.items() if ppid in found and pid not in found}
        grew = bool(new)
        found |= new
    return {pid for pid in found if table.get(pid, ("Z",))[0] not in ("Z", "X")}


def kill_tree(tag: str, leader: int, *, grace_s: float = TERM_GRACE_S) -> TreeKill:
    """SIGTERM the tree, wait up to ``grace_s`` for it, then SIGKILL what is left."""
    killed: set[int] = set()
    alive = members(tag, leader)
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        _reap(alive)
        killed |= alive - (alive := members(tag, leader))
    for _ in range(_KILL_ROUNDS):
        if not alive:
            break
        for pid in alive:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.05)
        _reap(alive)
        killed |= alive - (alive := members(tag, leader))
    return TreeKill(tuple(sorted(killed)), tuple(sorted(alive)))


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pids: set[int]) -> None:
    # orphans reparented to us (subreaper) are our children: collect them so
    # they do not stay zombies; the Popen leader is left to its Popen
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


class TreeTimeoutExpired(subprocess.TimeoutExpired):
    """``TimeoutExpired`` that also says what killing the tree achieved."""

    def __init__(self, cmd: list[str], timeout: float, tree: TreeKill) -> None:
        super().__init__(cmd, timeout)
        self.tree = tree


def run_bounded(
    argv: Sequence[str],
    *,
    timeout: float,
    capture_output: bool = True,
    text: bool = True,
    check: bool = False,
    env: Mapping[str, str] | None = None,
    **_ignored: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run``'s interface for the calls scontrol and cdi make,
    except that a timeout kills the whole tree (and says what was left)
    before ``TimeoutExpired`` is raised. ``subprocess.run`` kills only the
    child and then waits for the pipes, which a surviving grandchild holds."""
    tag = new_tag()
    become_subreaper()
    pipe = subprocess.PIPE if capture_output else None
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe, text=text,
        env=tagged_env(env, tag), start_new_session=True, close_fds=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        result = kill_tree(tag, proc.pid)
        log.warning("%s timed out after %gs; %s", argv[0], timeout, result.describe())
        try:
            proc.communicate(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise TreeTimeoutExpired(list(argv), timeout, result) from None
    except BaseException:
        kill_tree(tag, proc.pid, grace_s=0)
        raise
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, list(argv), out, err)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
