"""A real systemd user manager on a private D-Bus bus, for tests.

The build machines do not boot with systemd, but ``systemd --user`` runs fine
when it sees ``/run/systemd/system`` (it refuses to start otherwise). So the
manager runs in a private mount namespace (``unshare --mount``) with its own
tmpfs ``/run``; its bus socket and ``XDG_RUNTIME_DIR`` live in a normal temp
directory, so the test process itself, outside the namespace, reaches both.
See /work/shared/docs/real-systemd-testing.md for the recipe this follows,
with one difference found while building this: the user manager's stock
``dbus.socket`` listens on ``$XDG_RUNTIME_DIR/bus`` and the manager only joins
a bus once its own ``dbus.service`` runs, so a separately started dbus-daemon
gets its socket path taken over. The harness therefore lets the manager run
the bus itself (socket-activated ``dbus.service``) and waits until
``org.freedesktop.systemd1`` answers on it.

Everything is torn down by PID (the manager's own PID, then the bus daemon's
PID read from ``dbus.service``'s MainPID), never by process name, and every
wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from migmanagerd.demo.processes import BOOT_SCRIPT, alive, ping_systemd, remove_cgroups, start_time, terminate

SYSTEMD_BINARY = Path("/lib/systemd/systemd")
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 30.0


# The user bus, as the manager runs it: a socket on $XDG_RUNTIME_DIR/bus that
# activates dbus-daemon. The manager recognises these two by name and joins
# the bus once dbus.service runs. Written here (they override any stock copy)
# so the harness does not depend on the dbus-user-session package.
_DBUS_SOCKET = """\
[Unit]
Description=D-Bus bus for tests
[Socket]
ListenStream=%t/bus
"""
_DBUS_SERVICE = f"""\
[Unit]
Description=D-Bus bus for tests
Requires=dbus.socket
[Service]
ExecStart={shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"} --session --address=systemd: --nofork --nopidfile --systemd-activation --nosyslog
StandardOutput=append:{{root}}/dbus.log
StandardError=append:{{root}}/dbus.log
"""


def missing_requirement() -> str | None:
    """Why this machine cannot run the harness, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (for unshare --mount)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    if shutil.which("dbus-daemon") is None:
        return "dbus-daemon not found (apt-get install dbus)"
    if not SYSTEMD_BINARY.exists():
        return f"{SYSTEMD_BINARY} not found (apt-get install systemd)"
    if shutil.which("systemctl") is None:
        return "systemctl not found (apt-get install systemd)"
    return None


class HarnessError(RuntimeError):
    pass


@dataclass
class SystemdUserManager:
    """One running user manager: its temp root, bus address and PIDs."""

    root: Path
    manager_pid: int
    dbus_pid: int
    env: dict[str, str]
    unit_dir: Path
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _dbus_started: str = field(default="", repr=False)

    # --- commands -----------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        """`systemctl --user ARGS` against this manager, output captured as text."""
        return self._run(["systemctl", "--user", *args], check=check, timeout=timeout)

    def _run(self, argv: list[str], *, check: bool, timeout: float) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env}
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise HarnessError(
                f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def prop(self, unit: str, name: str) -> str:
        return self.systemctl("show", "-p", name, "--value", unit).stdout.rstrip("\n")

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def wait_for(self, unit: str, state: str, timeout: float = 10.0) -> None:
        """Wait until ActiveState of ``unit`` is ``state``; raise on timeout."""
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.prop(unit, "ActiveState")
            if seen == state:
                return
            time.sleep(0.05)
        raise HarnessError(f"{unit}: ActiveState still '{seen}' after {timeout}s, wanted '{state}'")

    # --- lifecycle ----------------------------------------------------------

    @classmethod
    def start(cls) -> SystemdUserManager:
        root = Path(tempfile.mkdtemp(prefix="migmanagerd-systemd-"))
        run_dir = root / "run"
        cfg_dir = root / "cfg"
        unit_dir = cfg_dir / "systemd" / "user"
        run_dir.mkdir(mode=0o700)
        unit_dir.mkdir(parents=True)
        (unit_dir / "dbus.socket").write_text(_DBUS_SOCKET)
        (unit_dir / "dbus.service").write_text(_DBUS_SERVICE.format(root=root))
        (unit_dir / "sockets.target.wants").mkdir()
        (unit_dir / "sockets.target.wants" / "dbus.socket").symlink_to(unit_dir / "dbus.socket")
        bus = f"unix:path={run_dir}/bus"
        env = {
            "DBUS_SYSTEM_BUS_ADDRESS": bus,
            "DBUS_SESSION_BUS_ADDRESS": bus,
            "XDG_RUNTIME_DIR": str(run_dir),
            "XDG_CONFIG_HOME": str(cfg_dir),
        }
        # The manager hands its environment to every unit it starts: keep it
        # to what a node's manager has plus the bus addresses, so units see
        # DBUS_SYSTEM_BUS_ADDRESS (and reach this manager) but nothing of
        # pytest's. No NOTIFY_SOCKET: it must not notify a systemd above us.
        boot_env = {k: os.environ[k] for k in ("PATH", "LANG", "HOME") if k in os.environ}
        boot_env.update(env)
        log_level = os.environ.get("MIGMANAGERD_TEST_SYSTEMD_LOG_LEVEL", "info")
        proc = subprocess.Popen(
            [
                "unshare", "--mount", "--propagation", "private",
                "bash", "-c", BOOT_SCRIPT, "bash", str(root), str(SYSTEMD_BINARY), root.name, log_level,
            ],
            env=boot_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        mgr = cls(root=root, manager_pid=proc.pid, dbus_pid=0, env=env, unit_dir=unit_dir, _proc=proc)
        try:
            mgr._wait_ready()
        except BaseException:
            mgr.stop()
            raise
        return mgr

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise HarnessError(f"systemd --user exited early ({self._proc.returncode}): {err.strip()} {self._log_tail()}")
            # Not `is-system-running`: outside the namespace there is no
            # /run/systemd/system, so systemctl would answer "offline".
            proc = self.systemctl("show", "-p", "SystemState", "--value", check=False, timeout=5)
            last = proc.stdout.strip() or proc.stderr.strip()
            # "degraded" means some stock user unit failed; the manager works.
            if last in ("running", "degraded"):
                # The first call socket-activates dbus.service; the manager
                # joins the bus once that runs.
                last = ping_systemd(self.env["DBUS_SESSION_BUS_ADDRESS"])
                if not last:
                    pid = self.prop("dbus.service", "MainPID")
                    self.dbus_pid = int(pid) if pid.isdigit() else 0
                    self._dbus_started = start_time(self.dbus_pid)
                    return
            time.sleep(0.05)
        raise HarnessError(f"systemd --user not ready after {START_TIMEOUT_S}s (last answer: {last!r}) {self._log_tail()}")

    def _log_tail(self) -> str:
        log = self.root / "systemd.log"
        try:
            return "log: " + " | ".join(log.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the manager (it stops its units, the bus among them), then
        make sure the bus daemon is gone, by PID; remove the temp root."""
        if self._proc is not None:
            if self._proc.poll() is None:
                terminate(self._proc.pid, lambda: self._proc.poll() is not None)
            if self._proc.stderr:
                self._proc.stderr.close()
        # The manager normally stopped the bus already; kill a leftover only
        # if the PID is still that process (same start time), not a reuse.
        if self.dbus_pid and self._dbus_started and start_time(self.dbus_pid) == self._dbus_started:
            terminate(self.dbus_pid, lambda: not alive(self.dbus_pid))
        remove_cgroups(self.root.name, "migmanagerd-systemd-")
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
