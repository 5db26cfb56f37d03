"""The simulated node's state document and its file.

The state is one JSON file so that it survives process restarts (the unit is
a oneshot; tests and the demo call the CLI many times) and can be shared by
several processes. Every change is lock, load, mutate, atomic save: the lock is
an ``flock`` on ``<state>.lock`` (between processes) plus a per-path
``threading.Lock`` (between threads of one process), the save writes a
temporary file, fsyncs it and renames it over the state, so a reader never
sees half a document.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migmanagerd.atomic_file import write_atomic
from migmanagerd.errors import UsageError
from migmanagerd.file_lock import acquire

STATE_VERSION = 1

# Operations with a counter, a latency knob and fault injection.
OPERATIONS = ("create_gi", "destroy_gi", "create_ci", "destroy_ci", "set_mode", "reset")


@dataclass
class SimCi:
    id: int
    profile_id: int
    start: int
    size: int
    uuid: str


@dataclass
class SimGi:
    id: int
    profile_id: int
    start: int
    size: int
    cis: list[SimCi] = field(default_factory=list)


@dataclass
class SimGpu:
    index: int
    uuid: str
    model: str | None  # catalog name; None for a GPU without MIG support
    name: str
    pci_device_id: int
    pci_subsystem_id: int
    pci_bus_id: str
    memory_mib: int
    mig_current: bool = False
    mig_pending: bool = False
    instances: list[SimGi] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    # processes on one MIG device: [pid, MIG device UUID]
    mig_processes: list[tuple[int, str]] = field(default_factory=list)

    @property
    def mig_capable(self) -> bool:
        return self.model is not None


@dataclass
class SimNode:
    node: str  # the node spec it was made from, e.g. "8xA100-SXM4-40GB"
    gpus: list[SimGpu]
    latency: dict[str, float] = field(default_factory=dict)
    no_reset: bool = False
    ops: dict[str, int] = field(default_factory=lambda: {op: 0 for op in OPERATIONS})

    def gpu(self, index: int) -> SimGpu | None:
        if 0 <= index < len(self.gpus):
            return self.gpus[index]
        return None

    def count(self, op: str, n: int = 1) -> None:
        self.ops[op] = self.ops.get(op, 0) + n


# --- JSON mapping -----------------------------------------------------------


def node_to_json(node: SimNode) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "node": node.node,
        "latency": dict(node.latency),
        "no_reset": node.no_reset,
        "ops": dict(node.ops),
        "gpus": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "model": g.model,
                "name": g.name,
                "pci_device_id": g.pci_device_id,
                "pci_subsystem_id": g.pci_subsystem_id,
                "pci_bus_id": g.pci_bus_id,
                "memory_mib": g.memory_mib,
                "mig_current": g.mig_current,
                "mig_pending": g.mig_pending,
                "processes": list(g.processes),
                "mig_processes": [[pid, uuid] for pid, uuid in g.mig_processes],
                "instances": [
                    {
                        "id": gi.id,
                        "profile_id": gi.profile_id,
                        "start": gi.start,
                        "size": gi.size,
                        "cis": [
                            {"id": ci.id, "profile_id": ci.profile_id, "start": ci.start, "size": ci.size, "uuid": ci.uuid}
                            for ci in gi.cis
                        ],
                    }
                    for gi in g.instances
                ],
            }
            for g in node.gpus
        ],
    }


def node_from_json(doc: Any, path: Path) -> SimNode:
    try:
        if doc.get("version") != STATE_VERSION:
            raise UsageError(f"{path}: simulator state version {doc.get('version')!r} is not {STATE_VERSION}; run 'migmanagerd sim init --force'")
        gpus = [
            SimGpu(
                index=int(g["index"]),
                uuid=str(g["uuid"]),
                model=g["model"],
                name=str(g["name"]),
                pci_device_id=int(g["pci_device_id"]),
                pci_subsystem_id=int(g["pci_subsystem_id"]),
                pci_bus_id=str(g["pci_bus_id"]),
                memory_mib=int(g["memory_mib"]),
                mig_current=bool(g["mig_current"]),
                mig_pending=bool(g["mig_pending"]),
                processes=[int(p) for p in g.get("processes", [])],
                mig_processes=[(int(p), str(u)) for p, u in g.get("mig_processes", [])],
                instances=[
                    SimGi(
                        id=int(gi["id"]),
                        profile_id=int(gi["profile_id"]),
                        start=int(gi["start"]),
                        size=int(gi["size"]),
                        cis=[SimCi(int(c["id"]), int(c["profile_id"]), int(c["start"]), int(c["size"]), str(c["uuid"])) for c in gi["cis"]],
                    )
                    for gi in g.get("instances", [])
                ],
            )
            for g in doc["gpus"]
        ]
        ops = {op: 0 for op in OPERATIONS}
        ops.update({str(k): int(v) for k, v in doc.get("ops", {}).items()})
        return SimNode(
            node=str(doc["node"]),
            gpus=gpus,
            latency={str(k): float(v) for k, v in doc.get("latency", {}).items()},
            no_reset=bool(doc.get("no_reset", False)),
            ops=ops,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{path}: not a migmanagerd simulator state ({exc!r}); run 'migmanagerd sim init --force'") from None


# --- the file ---------------------------------------------------------------

_PATH_LOCKS: dict[str, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    key = str(path.resolve())
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(key, threading.Lock())


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the node lock: threads of this process, then other processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock(path):
        fd = acquire(lock_path(path), None, mode=0o644)
        try:
            yield
        finally:
            os.close(fd)  # closing drops the flock


def read_node(path: Path) -> SimNode:
    """Load the state (call under ``locked`` when about to change it)."""
    fix = "run 'migmanagerd sim init --force'"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"simulated node state {path} does not exist; run 'migmanagerd sim init --node SPEC' or set MIGMANAGERD_SIM_NODE") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"{path}: cannot read the simulator state: {reason}; {fix}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}:{exc.colno}: simulator state is not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise UsageError(f"{path}: simulator state is nested too deeply to be one; {fix}") from None
    return node_from_json(doc, path)


def write_node(path: Path, node: SimNode) -> None:
    """Atomically replace the state: a reader sees the old or the new node."""
    write_atomic(path, json.dumps(node_to_json(node), indent=1, sort_keys=True).encode(), 0o644)
