"""A pytest plugin that fails the run when the tests touched this machine's node.

tests/conftest.py points every test at a throwaway node root
(``MIGMANAGERD_ROOT``) and a system bus that does not exist. A test that builds
a subprocess environment from scratch drops both, and then the program it runs
writes this machine's selection and state and reloads its systemd. This
plugin checks the outcome rather than the environment, so it catches any way
of getting there.

What it compares, before the first test and after each test and the session:

* the files under the host's ``/etc/nvidia-mig-manager``,
  ``/etc/systemd/system/nvidia-mig-manager.service.d`` and
  ``/var/lib/nvidia-mig-manager``: for each entry its type, mode, size,
  modification time and (for files) a SHA-256 of its contents; a directory
  that appears or disappears counts too;
* the host's systemd manager, when there is one: systemd stamps
  the time it last loaded its units (``RELOAD_STAMPS``) at every daemon-reload
  and daemon-reexec, so a different value at the end means it was reloaded. "There is one" means PID 1 is systemd
  (``/run/systemd/system`` exists, see sd_booted(3)); the values are read with
  ``systemctl show``, which as root asks PID 1 over its private socket,
  whatever ``DBUS_SYSTEM_BUS_ADDRESS`` says. Where PID 1 is not systemd (a
  container, a build machine) there is no host manager to reload: the header
  line says so and only the files are compared.

A change fails the session (exit status 1) with a report of what changed and
after which test it was first seen. Another process on the machine changing
these files during the run (a second ``make test`` from an older checkout, a
package install) is reported the same way: the guard cannot tell who did it.

For its own test (tests/test_host_guard.py) the guarded places can be moved:
``MIGMANAGERD_TEST_HOST_ROOT`` replaces ``/`` as the root of the three
directories, and ``MIGMANAGERD_TEST_HOST_SYSTEMD_BUS`` names the bus of a
systemd user manager to watch instead of PID 1.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ENV_HOST_ROOT = "MIGMANAGERD_TEST_HOST_ROOT"
ENV_HOST_SYSTEMD_BUS = "MIGMANAGERD_TEST_HOST_SYSTEMD_BUS"
GUARDED_DIRS = (
    "etc/nvidia-mig-manager",
    "etc/systemd/system/nvidia-mig-manager.service.d",
    "var/lib/nvidia-mig-manager",
)
# UnitsLoadTimestamp: when units were last (re)loaded (systemd >= 249 sets it at
# every daemon-reload); the other two move at a reload on older versions too.
RELOAD_STAMPS = ("UnitsLoadTimestampMonotonic", "UnitsLoadStartTimestampMonotonic", "GeneratorsStartTimestampMonotonic")
SYSTEMCTL_TIMEOUT_S = 10.0

Snapshot = dict[str, str]


def host_root() -> Path:
    return Path(os.environ.get(ENV_HOST_ROOT) or "/")


def _entry(path: Path) -> str:
    st = path.lstat()
    what = f"mode={st.st_mode:o} size={st.st_size} mtime={st.st_mtime_ns}"
    if path.is_symlink():
        return f"symlink->{os.readlink(path)} {what}"
    if path.is_file():
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            digest = f"unreadable ({exc.strerror})"
        return f"file {what} sha256={digest}"
    return f"dir {what}" if path.is_dir() else f"other {what}"


def snapshot_files(root: Path) -> Snapshot:
    """Every entry under the guarded directories (they included), keyed by path."""
    found: Snapshot = {}
    for rel in GUARDED_DIRS:
        top = root / rel
        if not top.exists() and not top.is_symlink():
            continue
        for path in [top, *sorted(top.rglob("*"))] if top.is_dir() else [top]:
            try:
                found[str(path)] = _entry(path)
            except OSError:
                continue  # removed while we looked: the next snapshot shows it
    return found


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    lines = [f"created {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


@dataclass(frozen=True)
class SystemdWatch:
    """How to read the reload stamps of the manager to watch, or why there is none."""

    argv: tuple[str, ...]
    env: dict[str, str]
    absent: str  # non-empty: there is no manager to watch, and why

    def stamps(self) -> str:
        if self.absent:
            return ""
        try:
            proc = subprocess.run(
                [*self.argv, "show", *(f"--property={p}" for p in RELOAD_STAMPS)],
                env=self.env, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unreadable: {exc}"
        return proc.stdout.strip() if proc.returncode == 0 else f"unreadable: {proc.stderr.strip()}"


def systemd_watch() -> SystemdWatch:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME")}
    bus = os.environ.get(ENV_HOST_SYSTEMD_BUS)
    if bus:
        run_dir = bus.removeprefix("unix:path=").rsplit("/", 1)[0]
        env = {**base, "DBUS_SESSION_BUS_ADDRESS": bus, "XDG_RUNTIME_DIR": run_dir}
        return SystemdWatch(("systemctl", "--user"), env, "")
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        pid1 = "unknown"
    if pid1 != "systemd" or not Path("/run/systemd/system").is_dir():
        return SystemdWatch((), {}, f"PID 1 is {pid1!r}, not systemd: no host manager to reload")
    return SystemdWatch(("systemctl", "--system"), base, "")


class HostGuard:
    def __init__(self) -> None:
        self.root = host_root()
        self.watch = systemd_watch()
        self.files = snapshot_files(self.root)
        self.stamps = self.watch.stamps()
        self.first_files = self.files
        self.culprits: list[str] = []

    def after_test(self, nodeid: str) -> None:
        now = snapshot_files(self.root)
        changes = diff(self.files, now)
        if changes:
            self.culprits.append(f"after {nodeid}: " + "; ".join(changes))
            self.files = now

    def problems(self) -> list[str]:
        found = diff(self.first_files, snapshot_files(self.root))
        stamps = self.watch.stamps()
        if stamps != self.stamps:
            found.append(f"the host's systemd was reloaded: {self.stamps!r} -> {stamps!r}")
        return found

    def header(self) -> str:
        systemd = self.watch.absent or f"watching {' '.join(self.watch.argv)} reloads"
        return f"host guard: {', '.join(str(self.root / d) for d in GUARDED_DIRS)}; {systemd}"


_KEY = pytest.StashKey[HostGuard]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_KEY] = HostGuard()


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash[_KEY].header()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    item.config.stash[_KEY].after_test(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    guard = session.config.stash[_KEY]
    problems = guard.problems()
    if not problems:
        return
    report = ["the tests changed this machine's node (they must use MIGMANAGERD_ROOT and a private bus):"]
    report += [f"  {p}" for p in problems]
    report += [f"  first seen {c}" for c in guard.culprits]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "HOST GUARD FAILED", red=True)
        for line in report:
            reporter.write_line(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
