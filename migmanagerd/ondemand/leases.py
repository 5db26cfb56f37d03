"""Leases on MIG devices: ``<state dir>/leases.json``, written atomically.

A lease ties one MIG device (by UUID) to an owner: a job id given with
``--owner``, or ``pid:N``, the process that asked (released when that process
is gone; its start time is kept so a reused PID does not inherit the lease).
``pending`` records a request that is changing a GPU, written before its
first GPU write and removed after its leases are written: a request killed in
between leaves it, and the next request (under the run lock) repairs that GPU.

Only ``serve`` changes this file, always under the service's run lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from migmanagerd.atomic_file import write_atomic
from migmanagerd.errors import MigManagerError, UsageError

LEASES_FILE = "leases.json"
VERSION = 1
PID_PREFIX = "pid:"


@dataclass(frozen=True)
class Lease:
    uuid: str  # MIG device UUID
    gpu: int
    profile: str
    owner: str
    created_at: str
    pid_start: str | None = None  # for ``pid:N`` owners: the process's start time

    @property
    def pid(self) -> int | None:
        return owner_pid(self.owner)


@dataclass(frozen=True)
class Pending:
    """A request changing GPU ``gpu``; present only while it runs (or after it was killed)."""

    pid: int
    gpu: int
    started_at: str
    before: tuple[str, ...] = ()  # UUIDs on the GPU before the change


@dataclass(frozen=True)
class LeaseBook:
    leases: tuple[Lease, ...] = ()
    pending: tuple[Pending, ...] = ()

    @property
    def leased(self) -> dict[str, Lease]:
        return {lease.uuid: lease for lease in self.leases}

    def owned_by(self, owner: str) -> tuple[Lease, ...]:
        return tuple(lease for lease in self.leases if lease.owner == owner)

    def add(self, leases: Iterable[Lease]) -> LeaseBook:
        new = tuple(leases)
        taken = self.leased
        for lease in new:
            if lease.uuid in taken:
                # the run lock makes this impossible; if it happens, refuse loudly
                raise UsageError(f"{lease.uuid} is already leased to {taken[lease.uuid].owner}")
        return replace(self, leases=self.leases + new)

    def release(self, owner: str) -> tuple[LeaseBook, tuple[Lease, ...]]:
        gone = self.owned_by(owner)
        return replace(self, leases=tuple(x for x in self.leases if x.owner != owner)), gone

    def keep_only(self, uuids: set[str]) -> tuple[LeaseBook, tuple[Lease, ...]]:
        """Drop leases whose device no longer exists (a reboot, an apply)."""
        gone = tuple(x for x in self.leases if x.uuid not in uuids)
        return replace(self, leases=tuple(x for x in self.leases if x.uuid in uuids)), gone


def owner_pid(owner: str) -> int | None:
    if owner.startswith(PID_PREFIX) and owner[len(PID_PREFIX):].isdigit():
        return int(owner[len(PID_PREFIX):])
    return None


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (proc(5), stat field 22), or None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None  # a zombie has finished
    return fields[19]


def owner_alive(lease: Lease) -> bool:
    pid = lease.pid
    if pid is None:
        return True  # a job id lives until released
    start = process_start(pid)
    return start is not None and (lease.pid_start is None or start == lease.pid_start)


def drop_dead_owners(book: LeaseBook) -> tuple[LeaseBook, tuple[Lease, ...]]:
    gone = tuple(x for x in book.leases if not owner_alive(x))
    return replace(book, leases=tuple(x for x in book.leases if owner_alive(x))), gone


# ----------------------------------------------------------------- the file


def leases_path(state_dir: Path) -> Path:
    return state_dir / LEASES_FILE


def load_book(path: Path) -> LeaseBook:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return LeaseBook()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the leases: {exc.strerror}") from None
    try:
        doc = json.loads(text)
        if doc.get("version") != VERSION:
            raise ValueError(f"version {doc.get('version')!r}")
        leases = tuple(Lease(**item) for item in doc.get("leases", []))
        pending = tuple(
            Pending(int(p["pid"]), int(p["gpu"]), str(p["started_at"]), tuple(p.get("before", ())))
            for p in doc.get("pending", [])
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"{path}: not a migmanagerd leases file ({exc}); remove it to forget every lease") from None
    return LeaseBook(leases, pending)


def book_json(book: LeaseBook) -> dict[str, Any]:
    return {
        "version": VERSION,
        "leases": [asdict(x) for x in book.leases],
        "pending": [{**asdict(p), "before": list(p.before)} for p in book.pending],
    }


def save_book(path: Path, book: LeaseBook) -> None:
    """Replace the file atomically; a failed write leaves the old one (and says so, exit 1)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, (json.dumps(book_json(book), indent=1, sort_keys=True) + "\n").encode(), 0o600)
    except OSError as exc:
        raise MigManagerError(f"{path}: cannot write the leases: {exc.strerror or exc}") from None


# Parents that only run migmanagerd for someone and exit with it: the owner is their caller.
_WRAPPERS = frozenset({"sudo", "doas", "su", "runuser", "pkexec", "setpriv", "timeout", "env"})


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def _command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def caller_owner() -> tuple[str, str | None]:
    """``pid:<N>``: the shell or job that ran ``migmanagerd request`` (past a
    ``sudo`` or similar wrapper, which exits together with migmanagerd)."""
    pid = os.getppid()
    for _ in range(4):
        if _command_of(pid) not in _WRAPPERS:
            break
        parent = _parent_of(pid)
        if parent is None or parent <= 1:
            break
        pid = parent
    return f"{PID_PREFIX}{pid}", process_start(pid)
