"""Who holds the GPUs: processes with a GPU context, and their systemd units.

A MIG mode switch resets the GPU, and NVML refuses a reset (``IN_USE``) while
any process holds it. Stopping the units in clients.yaml is the plan; this
module checks the plan covers every holder *before* anything is touched, so an
apply never fails half way on a busy GPU. Holders in an unlisted unit are
either refused (``discover: refuse``, the default) or added to the units to
stop (``discover: stop``). A holder that is not in a service unit (a shell
user's process lives in a ``session-N.scope``, PID 1's children in
``init.scope``), or that runs in a user's own manager (``user@UID.service``),
is always refused, with its PID and command line: only an operator can decide
to end someone's session.

``GpuBusy`` exits 1 ("not applied"): the config is valid, the node is busy;
the same command succeeds once the processes are gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from migmanagerd.clients.clientset import DISCOVER_MODES
from migmanagerd.clients.systemd import SystemdError
from migmanagerd.errors import MigManagerError
from migmanagerd.gpu.backend import Backend
from migmanagerd.log import get_logger

log = get_logger("clients")

_CMDLINE_MAX = 160


@dataclass(frozen=True)
class GpuHolder:
    gpu_index: int
    pid: int
    cmdline: str  # /proc/PID/cmdline, arguments joined by spaces
    unit: str | None  # the systemd unit the process runs in, if any

    def describe(self) -> str:
        where = f"unit {self.unit}" if self.unit else "no systemd unit"
        return f"GPU {self.gpu_index} PID {self.pid} '{self.cmdline}' ({where})"


class GpuBusy(MigManagerError):
    """GPUs are held by processes the apply would not stop. Nothing changed."""

    def __init__(self, holders: Sequence[GpuHolder], hint: str) -> None:
        self.holders = tuple(holders)
        listed = "; ".join(h.describe() for h in self.holders)
        super().__init__(f"GPU in use, nothing changed: {listed}. {hint}")


class UnitLookup(Protocol):
    """What the lookup needs of systemd (a ``SystemdManager``, or the service's lazy one)."""

    def unit_by_pid(self, pid: int) -> str | None: ...


def find_gpu_holders(
    backend: Backend,
    manager: UnitLookup | None,
    gpu_indices: Sequence[int],
    *,
    proc_root: Path = Path("/proc"),
) -> list[GpuHolder]:
    """Processes holding the given GPUs, each with its command line and unit.

    Processes that exit while we look are left out: they hold nothing. Without
    a ``manager``, or when systemd cannot be asked, units are unknown (None),
    and ``check_holders`` refuses such holders by PID and command line.
    """
    holders: list[GpuHolder] = []
    seen: set[tuple[int, int]] = set()
    for index in gpu_indices:
        for proc in backend.processes(index):
            key = (index, proc.pid)
            if key in seen:
                continue
            seen.add(key)
            cmdline = read_cmdline(proc.pid, proc_root)
            if cmdline is None:
                log.debug("GPU %d: PID %d exited while listing GPU processes", index, proc.pid)
                continue
            unit = None
            if manager is not None:
                try:
                    unit = manager.unit_by_pid(proc.pid)
                except SystemdError as exc:
                    # Without systemd the holder cannot be stopped through
                    # it anyway; it is then refused by PID and command line.
                    log.warning("GPU %d: cannot look up the unit of PID %d: %s", index, proc.pid, exc)
                    manager = None
            holders.append(GpuHolder(gpu_index=index, pid=proc.pid, cmdline=cmdline, unit=unit))
    return holders


def check_holders(holders: Iterable[GpuHolder], listed_units: Iterable[str], discover: str) -> tuple[str, ...]:
    """Units to stop in addition to ``listed_units`` so that no holder is left.

    Raises ``GpuBusy`` naming every holder that would be left: any holder
    outside a service unit, and with ``discover: refuse`` any holder in a
    service unit that is not listed. The returned units (``discover: stop``)
    are in discovery order; append them to the listed units so they are
    stopped first (stops run in reverse) and restarted last.
    """
    if discover not in DISCOVER_MODES:
        raise ValueError(f"discover must be one of {', '.join(DISCOVER_MODES)}, not {discover!r}")
    listed = set(listed_units)
    extra: list[str] = []
    refused: list[GpuHolder] = []
    unstoppable = False
    for holder in holders:
        if holder.unit in listed:
            continue
        if holder.unit is None or not holder.unit.endswith(".service") or is_user_manager(holder.unit):
            unstoppable = True
            refused.append(holder)
        elif discover == "stop":
            if holder.unit not in extra:
                log.info("%s holds GPU %d; stopping it too (discover: stop)", holder.unit, holder.gpu_index)
                extra.append(holder.unit)
        else:
            refused.append(holder)
    if refused:
        if unstoppable:
            hint = "End these processes, or run them in a service unit listed in clients.yaml"
        else:
            hint = "List these units in clients.yaml, or set 'discover: stop' there to stop them too"
        raise GpuBusy(refused, hint)
    return tuple(extra)


def is_user_manager(unit: str) -> bool:
    """``user@UID.service`` is a user's whole systemd manager (every service
    and app of that user runs under it); ``user-runtime-dir@UID.service`` owns
    their /run/user. Stopping either ends a person's session: refused like a
    session scope, never discovered as a client to stop."""
    return unit.startswith(("user@", "user-runtime-dir@")) and unit.endswith(".service")


def read_cmdline(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The process's command line for messages; None when it has exited."""
    base = proc_root / str(pid)
    try:
        raw = (base / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return "?"
    text = " ".join(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)
    if not text:
        # Kernel threads and zombies have an empty cmdline; comm still names them.
        try:
            text = "[" + (base / "comm").read_text().strip() + "]"
        except OSError:
            return None
    text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > _CMDLINE_MAX:
        text = text[: _CMDLINE_MAX - 3] + "..."
    return text
