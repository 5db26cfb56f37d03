"""nvidia-mig-manager.service end to end, under a REAL systemd user manager.

The shipped unit and target are installed as they are; a test drop-in points
ExecStart at this checkout and the simulator, and resets the lines a user
manager cannot honour here (docs/fault-matrix.md says which and why). GPU
clients are real /bin/sleep services, two ordered After=nvidia-gpu-reset.target
as DCGM and kubelet are on a node. Everything is observed the way an operator
would: `systemctl show` properties, `migmanagerd sim show --json`, state.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import REPO, SERVICE, TARGET, WAIT_S, Node, client_unit, service_argv

CLIENT_DCGM = "dcgm-e2e.service"  # After=nvidia-gpu-reset.target, as DCGM is
CLIENT_MONITOR = "monitor-e2e.service"  # not ordered after the target (a node exporter)
CLIENT_KUBELET = "kubelet-e2e.service"  # After=nvidia-gpu-reset.target, as kubelet is
CLIENTS = (CLIENT_DCGM, CLIENT_MONITOR, CLIENT_KUBELET)
FAKE_REBOOT = "fake-reboot.service"

pytestmark = pytest.mark.usefixtures("both_backends")  # the unit on sim, and on NVML through the stand-in


class Box:
    """One simulated node and its units in the user manager."""

    def __init__(self, systemd_user, root: Path, *, no_reset: bool = False, hooks: dict | None = None) -> None:
        self.sd = systemd_user
        self.root = root
        self.node = Node(root / "node", dict(systemd_user.env), systemd_user.unit_dir, clients=CLIENTS)
        self.node.hooks = hooks or {}
        self.node.setup(no_reset=no_reset)
        self.log = root / "service.log"
        sd = systemd_user
        sd.write_unit(SERVICE, (REPO / "systemd" / SERVICE).read_text())
        sd.write_unit(TARGET, (REPO / "systemd" / TARGET).read_text())
        env = " ".join(f'"{k}={v}"' for k, v in sorted(self.node.env.items()))
        sd.write_unit(
            f"{SERVICE}.d/test.conf",
            "[Service]\n"
            "ExecStart=\n"
            f"ExecStart={' '.join(service_argv())}\n"
            f"Environment={env}\n"
            # the node root and the private bus live under /tmp; on a node the
            # bus is /run/dbus/system_bus_socket, which PrivateTmp= leaves alone
            "PrivateTmp=no\n"
            # a user manager would create it under $XDG_CONFIG_HOME; the state
            # directory of the test lives under the node root instead
            "StateDirectory=\n"
            f"StandardOutput=append:{self.log}\n"
            f"StandardError=append:{self.log}\n",
        )
        for unit, after in ((CLIENT_DCGM, True), (CLIENT_MONITOR, False), (CLIENT_KUBELET, True)):
            sd.write_unit(unit, client_unit(unit, after_target=after))
        sd.daemon_reload()
        sd.systemctl("enable", *CLIENTS)
        sd.daemon_reload()

    # --- units ------------------------------------------------------------

    def prop(self, name: str, unit: str = SERVICE) -> str:
        return self.sd.prop(unit, name)

    def start_clients(self) -> dict[str, int]:
        self.sd.systemctl("start", *CLIENTS, timeout=120)
        return self.client_pids()

    def client_pids(self) -> dict[str, int]:
        """Wait (bounded) until every client is active; their main PIDs."""
        for c in CLIENTS:
            self.sd.wait_for(c, "active", timeout=WAIT_S)
        return {c: int(self.prop("MainPID", c)) for c in CLIENTS}

    def clients_active(self) -> dict[str, str]:
        return {c: self.prop("ActiveState", c) for c in CLIENTS}

    def run_unit(self, verb: str = "restart") -> int:
        """`systemctl start|restart` the unit; returns its ExecMainStatus."""
        self.sd.systemctl(verb, SERVICE, check=False, timeout=120)
        return int(self.prop("ExecMainStatus"))

    def install_fake_reboot(self) -> Path:
        """reboot.target in the user manager: it pulls in a oneshot that appends
        to a marker file, so each reboot request leaves one line."""
        marker = self.root / "reboots"
        self.sd.write_unit("reboot.target", f"[Unit]\nDescription=fake reboot\nWants={FAKE_REBOOT}\n")
        self.sd.write_unit(
            FAKE_REBOOT, f"[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo reboot >> {marker}'\n"
        )
        self.sd.daemon_reload()
        return marker

    def diag(self) -> str:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return (
            f"Result={self.prop('Result')} ExecMainStatus={self.prop('ExecMainStatus')} "
            f"StatusText={self.prop('StatusText')!r}\n{tail}"
        )


def status_hook(path: Path) -> list[dict]:
    """A hook recording the unit's StatusText at the moment it runs."""
    return [{
        "command": "/bin/sh",
        "args": ["-c", f"systemctl --user show -p StatusText --value {SERVICE} >> {path}"],
    }]


def test_start_applies_restart_is_noop_select_switches(systemd_user, tmp_path) -> None:
    progress = tmp_path / "progress"
    box = Box(systemd_user, tmp_path, hooks={"apply-start": status_hook(progress), "pre-apply-config": status_hook(progress)})
    node = box.node
    node.cli("select", "all-balanced")  # reloads the real manager
    assert "MIG_PARTED_SELECTED_CONFIG=all-balanced" in box.prop("Environment")
    before = box.start_clients()

    assert box.run_unit("start") == 0, box.diag()
    assert box.prop("Result") == "success"
    assert (box.prop("ActiveState"), box.prop("SubState")) == ("active", "exited")  # RemainAfterExit
    assert node.holds("all-balanced"), node.sim_show()
    after = box.client_pids()
    assert all(after[c] != before[c] for c in CLIENTS), (before, after)  # each was stopped and started again
    # progress was visible while it ran, and the outcome after
    assert progress.read_text().splitlines() == [
        "applying config 'all-balanced' to GPU(s) 0, 1",  # at apply-start
        "resetting GPU(s) 0, 1 to activate the MIG mode change",  # at pre-apply-config
    ]
    assert box.prop("StatusText") == "config 'all-balanced' applied"
    state = node.state()
    assert state["last_run"]["result"] == "ok" and state["journal"] is None
    ops = node.ops()

    # the unit is RemainAfterExit: a restart runs it again, and it touches nothing
    assert box.run_unit("restart") == 0, box.diag()
    assert box.prop("StatusText") == "config 'all-balanced' is already applied; nothing to do"
    assert node.ops() == ops
    assert box.client_pids() == after
    assert len(progress.read_text().splitlines()) == 2  # no hook ran

    # select another config: the drop-in changes, the manager reloads, a restart applies it
    node.cli("select", "all-1g.5gb")
    assert "MIG_PARTED_SELECTED_CONFIG=all-1g.5gb" in box.prop("Environment")
    assert box.run_unit("restart") == 0, box.diag()
    assert node.holds("all-1g.5gb"), node.sim_show()
    new_ops = node.ops()
    # minimal change: the two 1g.5gb instances per GPU stay, 2g and 3g go, five 1g come
    assert new_ops["destroy_gi"] - ops["destroy_gi"] == 4
    assert new_ops["create_gi"] - ops["create_gi"] == 10
    assert new_ops["set_mode"] == ops["set_mode"] and new_ops["reset"] == ops["reset"]
    final = box.client_pids()
    assert all(final[c] != after[c] for c in CLIENTS)


def test_reboot_reapplies_the_persisted_selection(systemd_user, tmp_path) -> None:
    box = Box(systemd_user, tmp_path)
    node = box.node
    node.cli("select", "all-balanced")
    sd = systemd_user
    # installed as on a node: the target wants the service, the clients want the target
    sd.systemctl("enable", SERVICE)
    sd.daemon_reload()  # `enable` does not reload a user manager reached this way

    def boot() -> None:
        # what the boot transaction does: clients pull in the target, which
        # pulls in the service; ordering runs the service first
        box.start_clients()

    boot()
    assert box.prop("Result") == "success", box.diag()
    assert node.holds("all-balanced")
    ops = node.ops()

    # shut down, reboot the simulated node (MIG mode survives on A100; every
    # instance is gone), new boot id, boot again
    sd.systemctl("stop", *CLIENTS, SERVICE, TARGET)
    node.cli("sim", "reboot")
    node.new_boot()
    assert node.profiles() == [[], []]
    boot()
    assert box.prop("Result") == "success", box.diag()
    assert int(box.prop("ExecMainStatus")) == 0
    assert node.holds("all-balanced"), node.sim_show()
    now = node.ops()
    assert now["create_gi"] - ops["create_gi"] == 8 and now["set_mode"] == ops["set_mode"]
    box.client_pids()
    assert node.state()["last_run"]["result"] == "ok"
    # the clients ordered after the target started only once the service had finished
    done = int(box.prop("ExecMainExitTimestampMonotonic"))
    for c in (CLIENT_DCGM, CLIENT_KUBELET):
        assert int(box.prop("ActiveEnterTimestampMonotonic", c)) >= done


def test_mode_change_without_reset_requests_exactly_one_reboot(systemd_user, tmp_path) -> None:
    hooks_log = tmp_path / "hooks"
    record = [{"command": "/bin/sh", "args": ["-c", f"echo pre-apply-mode >> {hooks_log}"]}]
    box = Box(systemd_user, tmp_path, no_reset=True, hooks={"pre-apply-mode": record})
    node = box.node
    marker = box.install_fake_reboot()
    node.cli("select", "all-balanced")
    box.start_clients()

    def reboots() -> int:
        systemd_user.wait_for(FAKE_REBOOT, "inactive")  # the oneshot finished (bounded)
        return len(marker.read_text().splitlines()) if marker.exists() else 0

    # 1st run: the mode change needs a reboot: armed, requested once
    assert box.run_unit("start") == 0, box.diag()
    assert "rebooting once" in box.prop("StatusText")
    assert reboots() == 1
    state = node.state()
    assert state["reboot_guard"]["boot_id"] == node.boot_id_file.read_text().strip()
    assert state["last_run"]["result"] == "reboot-required"
    # the node is going down: the stopped clients stay journaled for the next boot
    assert set(state["journal"]["stopped_units"]) == set(CLIENTS)
    # let a second request be seen if one came
    systemd_user.systemctl("stop", "reboot.target")

    # 2nd run in the same boot (the reboot did not happen yet): no second
    # request, no hook, no stop; the clients the 1st run left are started again
    assert box.run_unit("restart") == 0, box.diag()
    assert "not requesting another" in box.prop("StatusText")
    assert reboots() == 1
    assert hooks_log.read_text().split() == ["pre-apply-mode"]
    pids = box.client_pids()
    assert node.state()["journal"] is None
    assert box.run_unit("restart") == 0, box.diag()
    assert box.client_pids() == pids and reboots() == 1

    # a new boot, but the mode is still not applied: fail, do not reboot again
    node.new_boot()
    assert box.run_unit("restart") == 1, box.diag()
    assert box.prop("Result") == "exit-code"
    assert "--rearm-reboot" in box.prop("StatusText")
    assert reboots() == 1
    box.client_pids()
    assert node.state()["reboot_guard"] is not None

    # the reboot that helps: the pending mode applies, the layout follows, the guard clears
    node.cli("sim", "reboot")
    node.new_boot()
    assert box.run_unit("restart") == 0, box.diag()
    assert node.holds("all-balanced"), node.sim_show()
    assert node.state()["reboot_guard"] is None
    assert reboots() == 1
    box.client_pids()


def test_reboot_request_that_fails_is_not_remembered(systemd_user, tmp_path) -> None:
    # no reboot.target in this manager: the request itself fails
    box = Box(systemd_user, tmp_path, no_reset=True)
    node = box.node
    node.cli("select", "all-balanced")
    before = box.start_clients()
    assert box.run_unit("start") == 1, box.diag()
    assert "reboot request failed" in box.prop("StatusText")
    state = node.state()
    assert state["reboot_guard"] is None  # the next run may request it again
    assert state["journal"] is None
    after = box.client_pids()  # not left stopped for a reboot that is not coming
    assert all(after[c] != before[c] for c in CLIENTS)


def test_config_that_does_not_fit_exits_2_and_stops_nothing(systemd_user, tmp_path) -> None:
    box = Box(systemd_user, tmp_path)
    node = box.node
    # `select` refuses it; an operator editing the drop-in by hand does not
    assert node.cli("select", "too-big", check=False).returncode == 2
    node.cli("select", "too-big", "--no-check")
    before = box.start_clients()
    assert box.run_unit("start") == 2, box.diag()
    assert box.prop("Result") == "exit-code"
    assert "too-big" in box.prop("StatusText")
    assert box.client_pids() == before
    assert all(v == 0 for v in node.ops().values())
    assert node.state()["last_run"]["exit_code"] == 2


def test_unit_killed_mid_run_next_start_restores_clients(systemd_user, tmp_path) -> None:
    kill = [{"command": "/bin/sh", "args": ["-c", "kill -9 $PPID"]}]
    box = Box(systemd_user, tmp_path, hooks={"pre-apply-config": kill})
    node = box.node
    node.cli("select", "all-balanced")
    box.start_clients()
    box.run_unit("start")
    assert box.prop("Result") == "signal", box.diag()
    assert box.prop("ExecMainStatus") == "9"
    journal = node.state()["journal"]
    assert set(journal["stopped_units"]) == set(CLIENTS)  # the mode change stopped them all
    assert all(box.prop("ActiveState", c) != "active" for c in CLIENTS)
    node.write_hooks({})
    assert box.run_unit("restart") == 0, box.diag()
    assert node.holds("all-balanced")
    box.client_pids()
    assert node.state()["journal"] is None


def test_bad_hook_timeout_env_is_the_service_usage_error_only(tmp_path) -> None:
    """The unit's Environment= may set MIGMANAGERD_HOOK_TIMEOUT; a bad value
    is a usage error of `service` (exit 2, naming it), not a traceback from
    every command."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MIGMANAGERD_HOOK_TIMEOUT": "ten", "PYTHONPATH": str(REPO), "MIGMANAGERD_ROOT": str(tmp_path)}
    run = lambda *argv: subprocess.run([sys.executable, "-m", "migmanagerd", *argv], env=env, capture_output=True, text=True, timeout=WAIT_S)  # noqa: E731
    svc = run("service")
    assert svc.returncode == 2
    assert "'ten' is not a number of seconds" in svc.stderr and "Traceback" not in svc.stderr
    other = run("select", "--help")
    assert other.returncode == 0 and "Traceback" not in other.stderr
    assert run("service", "--hook-timeout", "0").returncode == 2
