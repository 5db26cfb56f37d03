"""Processes, cgroups and the bus of a private systemd user manager.

Shared by the demo and the test harness (tests/systemd_harness.py), which both
run a user manager in its own cgroup and tear it down by PID, never by name.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")

# Runs inside `unshare --mount` as `bash -c BOOT_SCRIPT bash ROOT SYSTEMD CGROUP
# LOG_LEVEL`; `exec` keeps the manager's PID = the child's PID. Arguments, not
# environment, so they do not leak into every unit.
#
# The manager takes the cgroup it starts in as its root and puts each unit in
# app.slice/UNIT.service below it. Started from the machine's /init.scope,
# every user manager on the machine (a test session's, a demo's) would share
# one /app.slice, and stopping dbus.service in one would kill the others' bus
# daemons. So the shell first moves itself into CGROUP/init.scope in each
# writable hierarchy; the manager strips "/init.scope" and takes CGROUP as its
# root, as a real user manager in user@UID.service/init.scope does.
BOOT_SCRIPT = r"""
set -e
T=$1 SYSTEMD=$2 CGROUP=$3 LOG_LEVEL=$4
for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
  if [ -w "$h/cgroup.procs" ]; then
    mkdir -p "$h/$CGROUP/init.scope" && echo $$ >"$h/$CGROUP/init.scope/cgroup.procs"
  fi
done
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
# No journald in the namespace: the manager logs to systemd.log.
exec "$SYSTEMD" --user --log-target=console --log-level="$LOG_LEVEL" >"$T/systemd.log" 2>&1
"""


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
        return str(exc.message)
    try:
        con.call_sync(
            "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.DBus.Peer", "Ping",
            None, None, Gio.DBusCallFlags.NO_AUTO_START, 2000, None,
        )
        return ""
    except GLib.Error as exc:
        return str(exc.message)
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
        if not _kill_members(trees):
            break
        time.sleep(0.2)
    for tree in trees:
        for d in sorted((d for d in tree.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)) + [tree]:
            try:
                d.rmdir()
            except OSError:
                pass


def _kill_members(trees: list[Path]) -> set[int]:
    """SIGKILL every process listed in the cgroups under ``trees``; returns their PIDs."""
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
    return pids
