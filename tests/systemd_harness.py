"""A real systemd user manager on a private D-Bus bus, for tests.

The build machines do not boot with systemd, so the manager runs in a private
mount namespace with its own tmpfs ``/run``: :class:`demo.usermanager.UserManager`,
the same code the demo runs, explains how and tears it down by PID, never by
process name, with every wait bounded. This module adds what tests need on
top: one manager per test session in a temp directory of its own, whose bus
is also exported as the system bus (so migmanagerd's systemd client reaches
it), ``systemctl`` calls that raise on failure, and :class:`UnitSandbox`,
which undoes what each test wrote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from demo.usermanager import COMMAND_TIMEOUT_S, ManagerError, UserManager
from demo.usermanager import missing_requirement as missing_requirement

CGROUP_PREFIX = "migmanagerd-systemd-"  # the tests' managers' cgroups (and temp dirs)


class HarnessError(RuntimeError):
    pass


@dataclass
class SystemdUserManager:
    """One running user manager for a test session: its temp root, bus and units."""

    root: Path
    env: dict[str, str]
    unit_dir: Path
    _mgr: UserManager = field(repr=False)

    # --- commands -----------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """`systemctl --user ARGS` against this manager, output captured as text."""
        try:
            proc = self._mgr.systemctl(*args, timeout=timeout)
        except ManagerError as exc:
            raise HarnessError(str(exc)) from None
        if check and proc.returncode != 0:
            raise HarnessError(
                f"systemctl --user {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def prop(self, unit: str, name: str) -> str:
        return self.systemctl("show", "-p", name, "--value", unit).stdout.rstrip("\n")

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def wait_for(self, unit: str, state: str, timeout: float = 10.0) -> None:
        """Wait until ActiveState of ``unit`` is ``state``; raise on timeout."""
        seen = self._mgr.wait_for(unit, (state,), timeout=timeout)
        if seen != state:
            raise HarnessError(f"{unit}: ActiveState still '{seen}' after {timeout}s, wanted '{state}'")

    # --- lifecycle ----------------------------------------------------------

    @classmethod
    def start(cls) -> SystemdUserManager:
        root = Path(tempfile.mkdtemp(prefix=CGROUP_PREFIX))
        # The manager hands its environment to every unit it starts: keep it
        # to what a node's manager has plus the bus addresses, so units see
        # DBUS_SYSTEM_BUS_ADDRESS (and reach this manager) but nothing of pytest's.
        mgr = UserManager(
            root,
            cgroup_prefix=CGROUP_PREFIX,
            system_bus=True,
            base_env={k: os.environ[k] for k in ("PATH", "LANG", "HOME") if k in os.environ},
            log_level=os.environ.get("MIGMANAGERD_TEST_SYSTEMD_LOG_LEVEL", "info"),
        )
        try:
            mgr.start()
        except BaseException as exc:
            mgr.stop()
            shutil.rmtree(root, ignore_errors=True)
            if isinstance(exc, ManagerError):
                raise HarnessError(str(exc)) from None
            raise
        return cls(root=root, env=dict(mgr.env), unit_dir=mgr.user_unit_dir, _mgr=mgr)

    def stop(self) -> None:
        """Stop the manager and whatever it left, by PID; remove the temp root."""
        self._mgr.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class UnitSandbox:
    """The per-test view of the shared manager: tracks what a test wrote and
    undoes it afterwards (stop, remove files, reload) so tests do not leak."""

    def __init__(self, manager: SystemdUserManager) -> None:
        self._mgr = manager
        self.env = manager.env
        self.unit_dir = manager.unit_dir
        self.root = manager.root
        self._written: list[str] = []
        self._baseline = set(_tree(manager.unit_dir))

    def write_unit(self, name: str, text: str) -> Path:
        """Write a unit file (or a drop-in, e.g. ``x.service.d/y.conf``)."""
        path = self.unit_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        unit = name.split("/", 1)[0]
        if unit.endswith(".d"):
            unit = unit[:-2]
        if unit not in self._written:
            self._written.append(unit)
        return path

    def daemon_reload(self) -> None:
        self._mgr.daemon_reload()

    def systemctl(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        return self._mgr.systemctl(*args, check=check, timeout=timeout)

    def prop(self, unit: str, name: str) -> str:
        return self._mgr.prop(unit, name)

    def wait_for(self, unit: str, state: str, timeout: float = 10.0) -> None:
        self._mgr.wait_for(unit, state, timeout)

    def cleanup(self) -> None:
        mgr = self._mgr
        # Pending jobs first: a queued start would otherwise restart a unit we stop.
        for line in mgr.systemctl("list-jobs", "--no-legend", "--plain", check=False).stdout.splitlines():
            job = line.split(None, 1)[0] if line.strip() else ""
            if job.isdigit():
                mgr.systemctl("cancel", job, check=False)
        if self._written:
            # SIGKILL first so slow ExecStop= commands cannot stretch teardown.
            mgr.systemctl("kill", "--signal=SIGKILL", *self._written, check=False)
            mgr.systemctl("stop", *self._written, check=False)
            mgr.systemctl("reset-failed", *self._written, check=False)
        for rel in sorted(set(_tree(self.unit_dir)) - self._baseline, key=lambda p: -len(p.parts)):
            path = self.unit_dir / rel
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        mgr.systemctl("daemon-reload", check=False)
        self._written.clear()


def _tree(root: Path) -> list[Path]:
    return [p.relative_to(root) for p in root.rglob("*")]
