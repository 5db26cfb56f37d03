"""SystemdManager against a real systemd user manager on a private bus."""

from __future__ import annotations

import time

import pytest

from migmanagerd.clients.systemd import (
    BusUnavailable,
    JobFailed,
    JobTimeout,
    SystemdError,
    SystemdManager,
    UnitMasked,
    UnitNotFound,
)
from migmanagerd.errors import MigManagerError

SLEEPER = "[Unit]\nDescription=test client\n[Service]\nExecStart=/bin/sleep 1000\n"


@pytest.fixture
def manager(systemd_user, monkeypatch):
    for key, value in systemd_user.env.items():
        monkeypatch.setenv(key, value)
    mgr = SystemdManager.connect()
    yield mgr
    mgr.close()


def test_unit_state_of_an_inactive_unit(systemd_user, manager):
    systemd_user.write_unit(
        "t-client.service", "[Unit]\nAfter=t-other.target\n[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=default.target\n"
    )
    systemd_user.daemon_reload()
    state = manager.unit("t-client.service")
    assert state.name == "t-client.service"
    assert state.load_state == "loaded"
    assert state.active_state == "inactive"
    assert state.unit_file_state == "disabled"
    assert state.type == "oneshot"
    assert "t-other.target" in state.after
    systemd_user.systemctl("enable", "t-client.service")
    assert manager.unit("t-client.service").unit_file_state == "enabled"


def test_unit_state_of_a_missing_and_a_masked_unit(systemd_user, manager):
    assert manager.unit("t-nothing.service").load_state == "not-found"
    systemd_user.systemctl("mask", "t-masked.service")
    systemd_user.daemon_reload()
    state = manager.unit("t-masked.service")
    assert state.load_state == "masked"
    assert state.type == ""


def test_target_has_no_service_type(systemd_user, manager):
    systemd_user.write_unit("t-group.target", "[Unit]\nDescription=group\n")
    systemd_user.daemon_reload()
    assert manager.unit("t-group.target").type == ""


def test_start_and_stop_wait_for_the_job(systemd_user, manager):
    systemd_user.write_unit("t-sleep.service", SLEEPER)
    systemd_user.daemon_reload()
    assert manager.start("t-sleep.service", 10) == "done"
    # Waited for: the state is already there, no polling needed.
    assert systemd_user.prop("t-sleep.service", "ActiveState") == "active"
    assert manager.unit("t-sleep.service").sub_state == "running"
    assert manager.stop("t-sleep.service", 10) == "done"
    assert systemd_user.prop("t-sleep.service", "ActiveState") == "inactive"


def test_stopping_an_inactive_unit_is_done(systemd_user, manager):
    systemd_user.write_unit("t-sleep.service", SLEEPER)
    systemd_user.daemon_reload()
    assert manager.stop("t-sleep.service", 10) == "done"


def test_start_of_a_failing_unit_raises_job_failed(systemd_user, manager):
    systemd_user.write_unit("t-false.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n")
    systemd_user.daemon_reload()
    with pytest.raises(JobFailed) as info:
        manager.start("t-false.service", 10)
    assert info.value.result == "failed"
    assert "t-false.service" in str(info.value)
    assert isinstance(info.value, MigManagerError)


def test_dependency_failure_is_reported(systemd_user, manager):
    systemd_user.write_unit("t-false.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n")
    systemd_user.write_unit(
        "t-needs.service", "[Unit]\nRequires=t-false.service\nAfter=t-false.service\n[Service]\nExecStart=/bin/sleep 1000\n"
    )
    systemd_user.daemon_reload()
    with pytest.raises(JobFailed) as info:
        manager.start("t-needs.service", 10)
    assert info.value.result == "dependency"


def test_start_of_missing_and_masked_units(systemd_user, manager):
    with pytest.raises(UnitNotFound, match="t-nothing.service"):
        manager.start("t-nothing.service", 10)
    systemd_user.systemctl("mask", "t-masked.service")
    systemd_user.daemon_reload()
    with pytest.raises(UnitMasked, match="t-masked.service"):
        manager.start("t-masked.service", 10)
    with pytest.raises(UnitMasked):
        manager.enqueue_start("t-masked.service")


def test_invalid_unit_name_is_a_clear_error(manager):
    with pytest.raises(SystemdError, match="bad name!"):
        manager.unit("bad name!")


def test_stop_timeout(systemd_user, manager):
    systemd_user.write_unit(
        "t-slowstop.service", "[Service]\nExecStart=/bin/sleep 1000\nExecStop=/bin/sleep 30\nTimeoutStopSec=60\n"
    )
    systemd_user.daemon_reload()
    manager.start("t-slowstop.service", 10)
    with pytest.raises(JobTimeout) as info:
        manager.stop("t-slowstop.service", 0.5)
    assert info.value.unit == "t-slowstop.service"
    assert "0.5s" in str(info.value)
    assert systemd_user.prop("t-slowstop.service", "ActiveState") == "deactivating"


def test_enqueue_start_returns_a_job_without_waiting(systemd_user, manager):
    systemd_user.write_unit("t-slowstart.service", "[Service]\nType=oneshot\nExecStart=/bin/sleep 30\n")
    systemd_user.daemon_reload()
    job = manager.enqueue_start("t-slowstart.service")
    assert job.startswith("/org/freedesktop/systemd1/job/")
    assert systemd_user.prop("t-slowstart.service", "ActiveState") == "activating"


def test_reload_picks_up_a_changed_unit_file(systemd_user, manager):
    systemd_user.write_unit("t-new.service", "[Unit]\nDescription=before\n[Service]\nExecStart=/bin/sleep 1000\n")
    systemd_user.daemon_reload()
    # Active, so systemd keeps it loaded (inactive units are unloaded and
    # re-read from disk on the next query, which would hide the reload).
    systemd_user.systemctl("start", "t-new.service")
    systemd_user.write_unit("t-new.service", "[Unit]\nDescription=after\n[Service]\nExecStart=/bin/sleep 1000\n")
    assert systemd_user.prop("t-new.service", "Description") == "before"
    manager.reload()
    # Reload returned only once reloading finished: the new file is in effect.
    assert systemd_user.prop("t-new.service", "Description") == "after"


def test_unit_by_pid_maps_a_real_main_pid(systemd_user, manager):
    systemd_user.write_unit("t-sleep.service", SLEEPER)
    systemd_user.daemon_reload()
    manager.start("t-sleep.service", 10)
    pid = int(systemd_user.prop("t-sleep.service", "MainPID"))
    assert manager.unit_by_pid(pid) == "t-sleep.service"


def test_unit_by_pid_of_no_process_is_none(manager):
    # PID above pid_max never exists.
    assert manager.unit_by_pid(2**22 + 1) is None


def test_reboot_starts_reboot_target_irreversibly(systemd_user, manager):
    marker = systemd_user.root / "rebooted"
    # The user manager's stock reboot.target would end the manager; this one
    # only runs a oneshot that leaves a marker.
    systemd_user.write_unit(
        "reboot.target", "[Unit]\nDescription=test reboot\nWants=t-reboot-marker.service\nAfter=t-reboot-marker.service\n"
    )
    systemd_user.write_unit(
        "t-reboot-marker.service", f"[Service]\nType=oneshot\nExecStart=/bin/touch {marker}\n"
    )
    systemd_user.daemon_reload()
    job = manager.reboot()
    assert job.startswith("/org/freedesktop/systemd1/job/")
    systemd_user.wait_for("reboot.target", "active")
    assert marker.exists()


def test_no_bus_is_bus_unavailable(tmp_path, monkeypatch):
    address = f"unix:path={tmp_path}/no-such-bus"
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
    with pytest.raises(BusUnavailable) as info:
        SystemdManager.connect()
    assert address in str(info.value)
    assert "\n" not in str(info.value)


def test_calls_after_close_are_bus_unavailable(manager):
    manager.close()
    with pytest.raises(BusUnavailable, match="closed"):
        manager.unit("t-anything.service")


def test_bus_disappearing_mid_call(manager, mocker):
    from gi.repository import Gio, GLib

    closed = GLib.Error.new_literal(Gio.io_error_quark(), "Underlying GIOStream returned 0 bytes", int(Gio.IOErrorEnum.CLOSED))
    mocker.patch.object(manager, "_con", wraps=manager._con)
    manager._con.call_sync.side_effect = closed
    with pytest.raises(BusUnavailable) as info:
        manager.start("t-whatever.service", 5)
    message = str(info.value)
    assert "t-whatever.service" in message and manager.address in message and "closed" in message


def test_systemd_gone_from_the_bus(manager, mocker):
    from gi.repository import Gio, GLib

    gone = GLib.Error.new_literal(Gio.dbus_error_quark(), "The name is not activatable", int(Gio.DBusError.SERVICE_UNKNOWN))
    mocker.patch.object(manager, "_con", wraps=manager._con)
    manager._con.call_sync.side_effect = gone
    with pytest.raises(BusUnavailable, match="systemd is not on the D-Bus bus"):
        manager.unit("t-whatever.service")


def test_bus_without_systemd_is_bus_unavailable(tmp_path, monkeypatch):
    import shutil
    import signal
    import subprocess

    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon not found (apt-get install dbus)")
    address = f"unix:path={tmp_path}/bus"
    daemon = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", f"--address={address}", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        import select

        ready, _, _ = select.select([daemon.stdout], [], [], 10)
        assert ready and daemon.stdout.readline().strip(), "dbus-daemon did not start within 10s"
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        with pytest.raises(BusUnavailable) as info:
            SystemdManager.connect(timeout_s=5)
        assert str(info.value) == f"cannot subscribe to systemd: systemd is not on the D-Bus bus at {address}"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=10)
        daemon.stdout.close()


def test_reload_failure_is_typed(manager, mocker):
    from gi.repository import Gio, GLib

    denied = GLib.Error.new_literal(Gio.dbus_error_quark(), "Access denied", int(Gio.DBusError.ACCESS_DENIED))
    mocker.patch.object(manager, "_con", wraps=manager._con)
    manager._con.call_sync.side_effect = denied
    with pytest.raises(SystemdError, match=r"cannot reload systemd \(daemon-reload\): .*Access denied"):
        manager.reload()


# A start of an active unit does nothing; slurmd after a GRES change and the
# CDI refresh unit need a real restart, so these check the process changes.
SLEEPER_RS = "[Service]\nExecStart=/bin/sleep 1000\n"
ONESHOT_RS = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'echo ran >> {trail}'\n"


def test_restart_replaces_the_running_process_where_start_would_not(systemd_user, manager):
    systemd_user.write_unit("rs-slurmd.service", SLEEPER_RS)
    systemd_user.daemon_reload()
    manager.start("rs-slurmd.service", 10)
    first = systemd_user.prop("rs-slurmd.service", "MainPID")
    manager.start("rs-slurmd.service", 10)
    assert systemd_user.prop("rs-slurmd.service", "MainPID") == first  # start: a no-op
    assert manager.restart("rs-slurmd.service", 10) == "done"
    second = systemd_user.prop("rs-slurmd.service", "MainPID")
    assert second not in (first, "0")


def test_enqueue_restart_runs_a_remain_after_exit_oneshot_again(systemd_user, manager, tmp_path):
    trail = tmp_path / "cdi.log"
    systemd_user.write_unit("rs-cdi-refresh.service", ONESHOT_RS.format(trail=trail))
    systemd_user.daemon_reload()
    manager.start("rs-cdi-refresh.service", 10)
    assert manager.enqueue_restart("rs-cdi-refresh.service").startswith("/org/freedesktop/systemd1/job/")
    systemd_user.wait_for("rs-cdi-refresh.service", "active")
    for _ in range(100):
        if trail.read_text().count("ran") == 2:
            break
        time.sleep(0.05)
    assert trail.read_text().count("ran") == 2
