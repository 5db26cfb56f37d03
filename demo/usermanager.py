"""A private systemd user manager: the one the demo runs and the tests use.

The machine need not boot with systemd, but ``systemd --user`` runs anywhere
it sees ``/run/systemd/system`` (it refuses to start otherwise). So the
manager runs in its own mount namespace (``unshare --mount``) over a tmpfs
``/run``; the host's ``/run`` is never touched. Its ``XDG_RUNTIME_DIR`` (and
with it the bus socket) is in a temp directory, so ``systemctl --user`` and
migmanagerd, outside the namespace, reach it there. The demo (``python -m
demo``) and the tests' fixture (tests/systemd_harness.py) both use
:class:`UserManager`; they differ only in the options they pass.

The bus: a dbus-daemon listening on ``$XDG_RUNTIME_DIR/bus``. The user manager
takes that path over for its own ``dbus.socket`` and only joins a bus once its
``dbus.service`` runs, so instead of a separately forked daemon the manager
socket-activates dbus-daemon itself from two tiny units written here (they
override any stock copy, so nothing depends on the dbus-user-session
package). Either way it is a dbus-daemon on a socket in the temp dir, gone
when the manager goes.

``SYSTEMD_UNIT_PATH`` (read by the manager at start; the trailing ``:`` keeps
the default directories) can put more unit directories in front: the demo
adds its node root's ``etc/systemd/system`` and ``usr/lib/systemd/system``,
so the unit, its selector drop-in (``override.conf``, rewritten by
``migmanagerd select``) and the GPU clients live where a real node has them.

Every wait is bounded. Teardown is by PID only, never by name: the manager
(the PID we started; ``exec`` keeps it), then anything it left behind among
the PIDs recorded while it ran (the bus daemon, the clients' ``/bin/sleep``),
each checked against its start time so a reused PID is never signalled, then
the PIDs still listed in the manager's own cgroups (see processes.BOOT_SCRIPT),
which are removed.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from demo.processes import (
    BOOT_SCRIPT,
    alive,
    cgroup_dirs,
    ping_systemd,
    remove_cgroups,
    start_time,
    terminate,
)

SYSTEMD_BINARY = Path("/lib/systemd/systemd")
CGROUP_PREFIX = "migmanagerd-demo-"  # the demo's; teardown removes only cgroups named with its prefix
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 30.0

_DBUS_SOCKET = """\
[Unit]
Description=D-Bus bus of a private user manager
[Socket]
ListenStream=%t/bus
"""


def _dbus_service(log: Path) -> str:
    daemon = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"
    # its complaints (a client disconnected for exceeding a limit, ...) go to
    # a file in the manager's directory: there is no syslog/journald here
    return (
        "[Unit]\nDescription=D-Bus bus of a private user manager\nRequires=dbus.socket\n"
        "[Service]\n"
        f"ExecStart={daemon} --session --address=systemd: --nofork --nopidfile --systemd-activation --nosyslog\n"
        f"StandardOutput=append:{log}\nStandardError=append:{log}\n"
    )


def clean_environ() -> dict[str, str]:
    """The demo's environment without the caller's migmanagerd settings
    (MIG_PARTED_*, MIGMANAGERD_*): a user manager passes its environment on to
    its units, and the demo's node must not pick up, say, the caller's
    MIG_PARTED_CONFIG_FILE."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MIG_PARTED_", "MIGMANAGERD_"))}


def missing_requirement() -> str | None:
    """What this machine lacks to run the demo, or None."""
    if os.geteuid() != 0:
        return "needs root (unshare --mount needs CAP_SYS_ADMIN)"
    for tool, package in (("unshare", "util-linux"), ("dbus-daemon", "dbus"), ("systemctl", "systemd")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package})"
    if not SYSTEMD_BINARY.exists():
        return f"{SYSTEMD_BINARY} not found (apt-get install systemd)"
    try:
        import gi  # noqa: F401  (python3-gi: how migmanagerd talks D-Bus)
    except ImportError:
        return "python3-gi not importable (apt-get install python3-gi)"
    return None


class ManagerError(RuntimeError):
    pass


class UserManager:
    """One running ``systemd --user`` on a private bus, rooted at ``root``.

    ``root``'s name is the manager's cgroup and must start with
    ``cgroup_prefix``. ``unit_path``: unit directories searched before the
    default ones. ``system_bus``: also export the bus as
    ``DBUS_SYSTEM_BUS_ADDRESS``, so ``pydbus.SystemBus()`` (migmanagerd's
    systemd client) reaches this manager. ``base_env``: the environment the
    manager starts with (and hands on to every unit), before ``env``;
    default: the caller's, less its migmanagerd settings (:func:`clean_environ`).
    """

    def __init__(
        self,
        root: Path,
        unit_path: list[Path] | None = None,
        *,
        cgroup_prefix: str = CGROUP_PREFIX,
        system_bus: bool = False,
        base_env: dict[str, str] | None = None,
        log_level: str = "info",
    ) -> None:
        if not root.name.startswith(cgroup_prefix):
            raise ManagerError(f"{root}: the directory name must start with {cgroup_prefix!r} (it names the cgroup)")
        self.root = root
        self.run_dir = root / "run"
        self.cfg_dir = root / "cfg"
        self.user_unit_dir = self.cfg_dir / "systemd" / "user"
        self.unit_path = unit_path or []
        self.cgroup_prefix = cgroup_prefix
        self.log_level = log_level
        self.base_env = clean_environ() if base_env is None else base_env
        self.bus = f"unix:path={self.run_dir}/bus"
        self.env = {
            "DBUS_SESSION_BUS_ADDRESS": self.bus,
            "XDG_RUNTIME_DIR": str(self.run_dir),
            "XDG_CONFIG_HOME": str(self.cfg_dir),
        }
        if system_bus:
            self.env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus
        if self.unit_path:
            # the manager's search path; systemctl reads it too (to tell
            # whether a unit is enabled), so both see the same units
            self.env["SYSTEMD_UNIT_PATH"] = ":".join(str(p) for p in self.unit_path) + ":"
        self._proc: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, str] = {}  # pid -> start time, for teardown

    @property
    def pid(self) -> int:
        """The manager's PID (0 before start)."""
        return self._proc.pid if self._proc is not None else 0

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        wants = self.user_unit_dir / "sockets.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (self.user_unit_dir / "dbus.socket").write_text(_DBUS_SOCKET)
        (self.user_unit_dir / "dbus.service").write_text(_dbus_service(self.root / "dbus.log"))
        (wants / "dbus.socket").symlink_to(self.user_unit_dir / "dbus.socket")
        env = {**self.base_env, **self.env}
        # the manager must not report to a systemd its caller may run under
        env.pop("NOTIFY_SOCKET", None)
        self._proc = subprocess.Popen(
            [
                "unshare", "--mount", "--propagation", "private",
                "bash", "-c", BOOT_SCRIPT, "bash", str(self.root), str(SYSTEMD_BINARY), self.root.name, self.log_level,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # its own session: a Ctrl-C in the terminal reaches only the caller,
            # which then tears the manager down in order
            start_new_session=True,
            # and should the caller be SIGKILLed, the manager still gets SIGTERM
            # (kept across exec) and stops its units
            preexec_fn=_die_with_parent,
        )
        self._remember(self._proc.pid)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise ManagerError(f"systemd --user exited early ({self._proc.returncode}); {self.log_tail()}")
            # not `is-system-running`: outside the namespace there is no
            # /run/systemd/system, so systemctl would answer "offline"
            proc = self.systemctl("show", "-p", "SystemState", "--value", timeout=5)
            last = proc.stdout.strip() or proc.stderr.strip()
            if last in ("running", "degraded"):
                # the first call socket-activated dbus.service; wait until the
                # manager answers on that bus (what migmanagerd will use)
                last = ping_systemd(self.bus)
                if not last:
                    self.remember_unit("dbus.service")
                    return
            time.sleep(0.05)
        raise ManagerError(f"systemd --user not ready after {START_TIMEOUT_S:.0f}s (last answer: {last!r}); {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.root / "systemd.log").read_text(errors="replace")
        except OSError:
            return "no systemd log"
        return "systemd log: " + " | ".join(text.splitlines()[-lines:])

    def stop(self) -> list[str]:
        """Stop the manager (it stops its units, the bus among them), then
        anything recorded that is still the same process; never by name.
        Returns what is still left (empty when everything is gone)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            terminate(proc.pid, lambda: proc.poll() is not None)
        for pid, started in list(self._seen.items()):
            if proc is not None and pid == proc.pid:
                continue
            if start_time(pid) == started:
                terminate(pid, functools.partial(_gone, pid, started))
        remove_cgroups(self.root.name, self.cgroup_prefix)
        left = [f"pid {pid}" for pid, started in self._seen.items() if start_time(pid) == started and alive(pid)]
        left += [str(d) for d in cgroup_dirs(self.root.name)]
        return left

    # --- commands -----------------------------------------------------------

    def systemctl(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """``systemctl --user ARGS`` against this manager (never raises on exit status)."""
        env = {**clean_environ(), **self.env}
        try:
            return subprocess.run(["systemctl", "--user", *args], env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ManagerError(f"systemctl --user {' '.join(args)} did not return within {timeout:.0f}s") from None

    def prop(self, unit: str, name: str) -> str:
        return self.systemctl("show", "-p", name, "--value", unit).stdout.rstrip("\n")

    def props(self, unit: str, *names: str) -> dict[str, str]:
        out = self.systemctl("show", *(f"--property={n}" for n in names), unit).stdout
        found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return {n: found.get(n, "") for n in names}

    def main_pid(self, unit: str) -> int:
        pid = self.prop(unit, "MainPID")
        n = int(pid) if pid.isdigit() else 0
        if n:
            self._remember(n)
        return n

    def remember_unit(self, unit: str) -> None:
        self.main_pid(unit)

    def wait_for(self, unit: str, states: tuple[str, ...], timeout: float = 20.0) -> str:
        """Wait until ``unit``'s ActiveState is one of ``states``; return it
        (or the last one seen, on timeout)."""
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.prop(unit, "ActiveState")
            if seen in states:
                return seen
            time.sleep(0.05)
        return seen

    def _remember(self, pid: int) -> None:
        started = start_time(pid)
        if started:
            self._seen.setdefault(pid, started)


def _gone(pid: int, started: str) -> bool:
    """Whether the process recorded as (``pid``, ``started``) has exited."""
    return start_time(pid) != started or not alive(pid)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # best effort: the normal teardown does not depend on it




