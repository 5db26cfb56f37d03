"""Shared pytest fixtures.

Real systemd for tests
======================

``systemd_user`` (function scope) gives a test a REAL systemd user manager on a
private D-Bus bus (one manager per test session, started on first use; see
tests/systemd_harness.py and demo/usermanager.py).
The object it yields has:

* ``env: dict[str, str]`` — DBUS_SYSTEM_BUS_ADDRESS, DBUS_SESSION_BUS_ADDRESS,
  XDG_RUNTIME_DIR, XDG_CONFIG_HOME. Merge it into a subprocess's environment,
  or ``monkeypatch.setenv`` it, and ``pydbus.SystemBus()`` (thus
  ``SystemdManager.connect()``) and ``systemctl --user`` reach this manager.
* ``unit_dir: Path`` — where unit files go ($XDG_CONFIG_HOME/systemd/user).
* ``root: Path`` — the session's temp directory (handy for marker files;
  the manager's own log is ``root / "systemd.log"``, more of it with
  ``MIGMANAGERD_TEST_SYSTEMD_LOG_LEVEL=debug``).
* ``write_unit(name, text) -> Path`` — write a unit file, or a drop-in when
  ``name`` is ``"x.service.d/y.conf"``. Call ``daemon_reload()`` afterwards.
* ``daemon_reload()``
* ``systemctl(*args, check=True) -> subprocess.CompletedProcess`` — runs
  ``systemctl --user ARGS`` with ``env``; output captured as text; a non-zero
  exit raises when ``check`` is true.
* ``prop(unit, name) -> str`` — ``systemctl --user show -p NAME --value UNIT``.
* ``wait_for(unit, state, timeout=10)`` — poll ActiveState until it equals
  ``state``; raises on timeout.

Units started by this manager get a plain environment (PATH, HOME, LANG) plus
``env``: a unit running migmanagerd reaches this manager over D-Bus with no
Environment= line. Each session's manager runs in a cgroup of its own, so test
sessions running at the same time on one machine do not touch each other's
units.

After each test every pending job is cancelled, every unit the test wrote is
killed, stopped and reset, every file the test added under ``unit_dir``
(units, drop-ins, mask and enable symlinks) is removed, and the manager is
reloaded, so tests do not leak into each other.

Tests using it are marked ``systemd`` automatically. They are skipped, with a
message naming what is missing ("needs root", "needs unshare", "dbus-daemon
not found"), only where the machine cannot run a user manager at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from systemd_harness import SystemdUserManager, UnitSandbox, missing_requirement

# Fails the run when a test changed this machine's node files or reloaded its
# systemd, however it got round the isolation below (tests/host_guard.py).
pytest_plugins = ["host_guard"]


@pytest.fixture(scope="session")
def systemd_user_session() -> Iterator[SystemdUserManager]:
    why = missing_requirement()
    if why:
        pytest.skip(f"real systemd user manager unavailable: {why}")
    manager = SystemdUserManager.start()
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture
def systemd_user(systemd_user_session: SystemdUserManager) -> Iterator[UnitSandbox]:
    sandbox = UnitSandbox(systemd_user_session)
    try:
        yield sandbox
    finally:
        sandbox.cleanup()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "systemd_user" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.systemd)


@pytest.fixture(autouse=True)
def _throwaway_node_root(tmp_path_factory, monkeypatch) -> None:
    """Every test runs against a throwaway node root, so nothing it runs can
    write this machine's /etc/nvidia-mig-manager, the unit's drop-in or
    /var/lib/nvidia-mig-manager. A test that wants its own root (or bus) sets
    MIGMANAGERD_ROOT (DBUS_SYSTEM_BUS_ADDRESS) itself, which overrides this."""
    root = tmp_path_factory.mktemp("node-root")
    root.chmod(0o755)
    monkeypatch.setenv("MIGMANAGERD_ROOT", str(root))
    # nor talk to this machine's system manager (a daemon-reload after
    # `apply -c`): tests that want systemd use the systemd_user fixture's bus
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={root}/no-system-bus")


@pytest.fixture(params=["sim", "nvml"])
def both_backends(request):
    """Run the test once per GPU backend (tests/apply_helpers.py): the
    simulator, and the real NVML backend through nvidia-ml-py and the NVML
    stand-in on the same simulated node. Use it with
    ``pytestmark = pytest.mark.usefixtures("both_backends")``."""
    import apply_helpers

    apply_helpers.BACKEND[0] = request.param
    try:
        yield request.param
    finally:
        apply_helpers.BACKEND[0] = "sim"
        apply_helpers.close_backends()
