"""Processes, cgroups and the bus of a private systemd user manager.

Shared by the demo and the test harness (tests/systemd_harness.py), which both
run a user manager in its own cgroup and tear it down by PID, never by name.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable

CGROUP_ROOT = Path("/sys/fs/cgroup")


def start_time(pid: int) -> str:
    """The process's start time in clock ticks (/proc/PID/stat field 22); "" if
    it is gone. With the PID it identifies a process: PIDs are reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers kill(0); it is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def terminate(pid: int, gone: Callable[[], bool], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; each wait ends when ``gone()``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if gone():
                return
            time.sleep(0.05)


def ping_systemd(address: str) -> str:
    """"" when systemd answers on the bus at ``address``, else why not."""
    from gi.repository import Gio, GLib

    try:
        con = Gio.DBusConnection.new_for_address_sync(
            address,
            Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
            None,
            None,
        )
    except GLib.Error as exc:
        return exc.message
    try:
        con.call_sync(
            "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.DBus.Peer", "Ping",
            None, None, Gio.DBusCallFlags.NO_AUTO_START, 2000, None,
        )
        return ""
    except GLib.Error as exc:
        return exc.message
    finally:
        con.close_sync(None)


def cgroup_dirs(name: str) -> list[Path]:
    """The cgroup ``name`` in every hierarchy where it exists."""
    if not CGROUP_ROOT.is_dir():
        return []
    return [h / name for h in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()] if h.is_dir() and (h / name).is_dir()]


def remove_cgroups(name: str, prefix: str) -> None:
    """Kill what is left in our own cgroups (only processes our manager started
    are there), then remove them, deepest first, in every hierarchy. ``name``
    must start with ``prefix``: a cgroup we did not name is never touched."""
    if not name.startswith(prefix):
        return
    trees = cgroup_dirs(name)
    for _ in range(3):
        pids: set[int] = set()
        for tree in trees:
            for procs in tree.rglob("cgroup.procs"):
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except (OSError, ValueError):
                    pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids:
            break
        time.sleep(0.2)
    for tree in trees:
        for d in sorted((d for d in tree.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)) + [tree]:
            try:
                d.rmdir()
            except OSError:
                pass
