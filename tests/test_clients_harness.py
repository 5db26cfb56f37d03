"""The real-systemd fixture itself: units run, state is reset between tests."""

from __future__ import annotations

import os
import signal


def test_unit_runs_with_a_real_pid(systemd_user):
    systemd_user.write_unit("harness-sleep.service", "[Service]\nExecStart=/bin/sleep 1000\n")
    systemd_user.daemon_reload()
    systemd_user.systemctl("start", "harness-sleep.service")
    assert systemd_user.prop("harness-sleep.service", "ActiveState") == "active"
    pid = int(systemd_user.prop("harness-sleep.service", "MainPID"))
    assert pid > 0
    os.kill(pid, 0)  # a real process this test can see
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"/bin/sleep"


def test_previous_test_left_nothing_behind(systemd_user):
    # Same unit name as above: the sandbox removed its file and stopped it.
    assert not (systemd_user.unit_dir / "harness-sleep.service").exists()
    assert systemd_user.prop("harness-sleep.service", "LoadState") == "not-found"
    assert systemd_user.prop("harness-sleep.service", "ActiveState") == "inactive"


def test_mask_symlink_is_removed_afterwards(systemd_user):
    # mask writes a /dev/null symlink into unit_dir, so no unit file of ours.
    systemd_user.systemctl("mask", "harness-masked.service")
    systemd_user.daemon_reload()
    assert systemd_user.prop("harness-masked.service", "LoadState") == "masked"


def test_mask_did_not_leak(systemd_user):
    assert systemd_user.prop("harness-masked.service", "LoadState") == "not-found"


def test_wait_for_sees_a_state_change(systemd_user):
    systemd_user.write_unit("harness-short.service", "[Service]\nExecStart=/bin/sleep 1000\n")
    systemd_user.daemon_reload()
    systemd_user.systemctl("start", "harness-short.service")
    pid = int(systemd_user.prop("harness-short.service", "MainPID"))
    os.kill(pid, signal.SIGKILL)
    systemd_user.wait_for("harness-short.service", "failed", timeout=10)
