"""Restart (waited and queued) against a real systemd user manager.

A start of an active unit does nothing; slurmd after a GRES change and the
CDI refresh unit need a real restart, so this checks the process changes.
"""

from __future__ import annotations

import time

import pytest

from migmanagerd.clients.systemd import SystemdManager

SLEEPER = "[Service]\nExecStart=/bin/sleep 1000\n"
ONESHOT = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'echo ran >> {trail}'\n"


@pytest.fixture
def manager(systemd_user, monkeypatch):
    for key, value in systemd_user.env.items():
        monkeypatch.setenv(key, value)
    mgr = SystemdManager.connect()
    yield mgr
    mgr.close()


def test_restart_replaces_the_running_process_where_start_would_not(systemd_user, manager):
    systemd_user.write_unit("rs-slurmd.service", SLEEPER)
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
    systemd_user.write_unit("rs-cdi-refresh.service", ONESHOT.format(trail=trail))
    systemd_user.daemon_reload()
    manager.start("rs-cdi-refresh.service", 10)
    assert manager.enqueue_restart("rs-cdi-refresh.service").startswith("/org/freedesktop/systemd1/job/")
    systemd_user.wait_for("rs-cdi-refresh.service", "active")
    for _ in range(100):
        if trail.read_text().count("ran") == 2:
            break
        time.sleep(0.05)
    assert trail.read_text().count("ran") == 2
