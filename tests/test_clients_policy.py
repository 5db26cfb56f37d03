"""Stop/start policy: decisions as pure functions, then against real systemd."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from systemd_harness import HarnessError

from migmanagerd.clients.policy import (
    ClientController,
    StopFailed,
    _AfterWalker,
    stop_decision,
)
from migmanagerd.clients.systemd import JobTimeout, SystemdManager, UnitState

SLEEPER = "[Service]\nExecStart=/bin/sleep 1000\n"
INSTALL = "[Install]\nWantedBy=default.target\n"


def state(active="inactive", load="loaded", file_state="disabled", type_="simple", name="x.service"):
    return UnitState(name, load, active, "", file_state, type_, ())


# --- stop decisions, every unit state ---------------------------------------


@pytest.mark.parametrize(
    "unit_state,action",
    [
        (state("active"), "stop-and-restart"),
        (state("activating"), "stop-and-restart"),
        (state("reloading"), "stop-and-restart"),
        (state("deactivating"), "stop-only"),
        (state("failed"), "restart-only"),
        (state("inactive", file_state="enabled"), "restart-only"),
        (state("inactive", file_state="enabled-runtime"), "restart-only"),
        (state("inactive", file_state="disabled"), "skip"),
        (state("inactive", file_state="static"), "skip"),
        (state("active", type_="oneshot"), "skip"),
        (state("inactive", type_="oneshot", file_state="enabled"), "skip"),
        (state("inactive", load="not-found", file_state="", type_=""), "skip"),
        (state("active", load="not-found", file_state="", type_=""), "stop-only"),
        (state("inactive", load="masked", file_state="masked", type_=""), "skip"),
        (state("active", load="masked", file_state="masked", type_=""), "stop-only"),
        (state("active", type_=""), "stop-and-restart"),  # a target or socket
    ],
)
def test_stop_decision(unit_state, action):
    got, reason = stop_decision(unit_state)
    assert got == action
    assert reason


# --- After= walk on graphs systemd would not keep around on demand -------------


class GraphManager:
    def __init__(self, graph):
        self.graph = graph
        self.reads = []

    def after(self, name):
        self.reads.append(name)
        return tuple(self.graph.get(name, ()))


T = "nvidia-gpu-reset.target"


def test_walk_direct_chain_and_unrelated():
    g = GraphManager({"a": [T], "b": ["a"], "c": ["basic.target"], "basic.target": ["sysinit.target"]})
    w = _AfterWalker(g, T, 100)
    assert w.why_ordered_after("b") == f"ordered after {T}"
    assert w.why_ordered_after("a") == f"ordered after {T}"
    assert w.why_ordered_after("c") == ""
    assert w.why_ordered_after(T)  # the target itself is never waited for


def test_walk_cycles_terminate_and_do_not_poison_memory():
    # b -> a -> b is a cycle; a also reaches the target through c.
    g = GraphManager({"b": ["a"], "a": ["b", "c"], "c": [T], "x": ["y"], "y": ["x"]})
    w = _AfterWalker(g, T, 100)
    assert w.why_ordered_after("b")
    assert w.why_ordered_after("a")
    assert w.why_ordered_after("x") == ""
    assert w.why_ordered_after("y") == ""


def test_walk_finds_units_ordered_after_our_own_service():
    g = GraphManager({"a": ["nvidia-mig-manager.service"], "b": ["a"], "c": ["basic.target"]})
    w = _AfterWalker(g, T, 100, ("nvidia-mig-manager.service",))
    assert w.why_ordered_after("a") == "ordered after nvidia-mig-manager.service"
    assert w.why_ordered_after("b") == "ordered after nvidia-mig-manager.service"
    assert w.why_ordered_after("c") == ""


def test_walk_memoizes_across_units():
    g = GraphManager({"a": ["basic.target"], "b": ["basic.target"], "basic.target": ["sysinit.target"]})
    w = _AfterWalker(g, T, 100)
    w.why_ordered_after("a")
    w.why_ordered_after("b")
    assert g.reads.count("basic.target") == 1


def test_walk_bound_is_conservative():
    chain = {f"u{i}": [f"u{i + 1}"] for i in range(50)}
    w = _AfterWalker(GraphManager(chain), T, 10)
    assert "larger than 10 units" in w.why_ordered_after("u0")


# --- against a real systemd user manager ---------------------------------------


@pytest.fixture
def manager(systemd_user, monkeypatch):
    for key, value in systemd_user.env.items():
        monkeypatch.setenv(key, value)
    mgr = SystemdManager.connect()
    yield mgr
    mgr.close()


def install_target(systemd_user, active: bool) -> None:
    systemd_user.write_unit(T, "[Unit]\nDescription=GPU reset done\n")
    systemd_user.daemon_reload()
    if active:
        systemd_user.systemctl("start", T)


def test_stop_reverse_order_and_restart_list_for_every_state(systemd_user, manager):
    u = systemd_user
    u.write_unit("c-active-a.service", SLEEPER)
    u.write_unit("c-active-b.service", SLEEPER)
    u.write_unit("c-enabled-idle.service", SLEEPER + INSTALL)
    u.write_unit("c-disabled-idle.service", SLEEPER)
    u.write_unit("c-static-idle.service", SLEEPER)  # no [Install]: static
    u.write_unit("c-failed-long.service", "[Service]\nExecStart=/bin/sh -c 'exit 3'\n")
    u.write_unit("c-oneshot.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n")
    u.write_unit("c-activating.service", "[Service]\nType=notify\nExecStart=/bin/sleep 1000\nTimeoutStartSec=infinity\n")
    u.daemon_reload()
    u.systemctl("enable", "c-enabled-idle.service")
    u.systemctl("mask", "c-masked.service")
    u.daemon_reload()
    u.systemctl("start", "c-active-a.service", "c-active-b.service", "c-oneshot.service")
    u.systemctl("start", "c-failed-long.service", check=False)
    u.wait_for("c-failed-long.service", "failed")
    u.systemctl("start", "--no-block", "c-activating.service")
    u.wait_for("c-activating.service", "activating")

    listed = [
        "c-active-a.service",
        "c-enabled-idle.service",
        "c-disabled-idle.service",
        "c-static-idle.service",
        "c-failed-long.service",
        "c-oneshot.service",
        "c-missing.service",
        "c-masked.service",
        "c-activating.service",
        "c-active-b.service",
    ]
    report = ClientController(manager, stop_timeout_s=10).stop(listed)

    assert report.stopped == ("c-active-b.service", "c-activating.service", "c-active-a.service")
    assert report.restart == (
        "c-active-a.service",
        "c-enabled-idle.service",
        "c-failed-long.service",
        "c-activating.service",
        "c-active-b.service",
    )
    skipped = dict(report.skipped)
    assert set(skipped) == {
        "c-disabled-idle.service",
        "c-static-idle.service",
        "c-oneshot.service",
        "c-missing.service",
        "c-masked.service",
    }
    assert skipped["c-missing.service"] == "not found"
    assert skipped["c-masked.service"] == "masked"
    assert "oneshot" in skipped["c-oneshot.service"]
    assert "static" in skipped["c-static-idle.service"]
    for unit in report.stopped:
        assert u.prop(unit, "ActiveState") == "inactive"
    # Skipped units were left as they were.
    assert u.prop("c-oneshot.service", "ActiveState") == "active"


def test_stop_then_start_restores_the_node(systemd_user, manager):
    u = systemd_user
    for name in ("c-1.service", "c-2.service", "c-3.service"):
        u.write_unit(name, SLEEPER)
    u.daemon_reload()
    u.systemctl("start", "c-1.service", "c-3.service")
    controller = ClientController(manager, stop_timeout_s=10, start_timeout_s=10)
    report = controller.stop(["c-1.service", "c-2.service", "c-3.service"])
    assert report.restart == ("c-1.service", "c-3.service")
    started = controller.start(report.restart)
    assert started.started == ("c-1.service", "c-3.service")  # no target installed: waited for
    assert started.enqueued == () and started.ok
    assert u.prop("c-1.service", "ActiveState") == "active"
    assert u.prop("c-2.service", "ActiveState") == "inactive"


def test_stop_timeout_raises_with_partial_report(systemd_user, manager):
    u = systemd_user
    u.write_unit("c-first.service", SLEEPER)
    u.write_unit("c-slow.service", "[Service]\nExecStart=/bin/sleep 1000\nExecStop=/bin/sleep 30\n")
    u.write_unit("c-last.service", SLEEPER)
    u.daemon_reload()
    u.systemctl("start", "c-first.service", "c-slow.service", "c-last.service")
    controller = ClientController(manager, stop_timeout_s=0.5)
    with pytest.raises(StopFailed) as info:
        controller.stop(["c-first.service", "c-slow.service", "c-last.service"])
    err = info.value
    assert isinstance(err.cause, JobTimeout)
    assert err.unit == "c-slow.service"
    assert "c-slow.service" in str(err) and "0.5s" in str(err)
    # c-last was stopped first (reverse order); c-first was never touched.
    assert err.report.stopped == ("c-last.service",)
    assert err.report.restart == ("c-slow.service", "c-last.service")
    assert u.prop("c-first.service", "ActiveState") == "active"


def test_failed_start_is_reported_while_others_start(systemd_user, manager):
    u = systemd_user
    u.write_unit("c-ok-1.service", SLEEPER)
    u.write_unit("c-bad.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n")
    u.write_unit("c-ok-2.service", SLEEPER)
    u.daemon_reload()
    install_target(u, active=True)
    report = ClientController(manager, start_timeout_s=10).start(
        ["c-ok-1.service", "c-bad.service", "c-missing.service", "c-ok-2.service"]
    )
    assert report.started == ("c-ok-1.service", "c-ok-2.service")
    failed = dict(report.failed)
    assert set(failed) == {"c-bad.service"}
    assert report.dropped == (("c-missing.service", "not-found"),)  # nothing to start: not a failure
    assert "'failed'" in failed["c-bad.service"]
    assert not report.ok
    assert u.prop("c-ok-2.service", "ActiveState") == "active"


def test_units_ordered_after_the_target_are_enqueued(systemd_user, manager):
    u = systemd_user
    install_target(u, active=True)
    u.write_unit("c-direct.service", f"[Unit]\nAfter={T}\n" + SLEEPER)
    u.write_unit("c-middle.target", f"[Unit]\nAfter={T}\n")
    u.write_unit("c-chained.service", "[Unit]\nAfter=c-middle.target\n" + SLEEPER)
    u.write_unit("c-free.service", SLEEPER)
    u.write_unit("c-cycle-a.service", "[Unit]\nAfter=c-cycle-b.service\n" + SLEEPER)
    u.write_unit("c-cycle-b.service", "[Unit]\nAfter=c-cycle-a.service\n" + SLEEPER)
    u.daemon_reload()
    units = ["c-direct.service", "c-chained.service", "c-free.service", "c-cycle-a.service"]
    report = ClientController(manager, start_timeout_s=10).start(units)
    assert report.enqueued == ("c-direct.service", "c-chained.service")
    assert report.started == ("c-free.service", "c-cycle-a.service")
    u.wait_for("c-direct.service", "active")
    u.wait_for("c-chained.service", "active")


def test_units_removed_or_masked_since_they_were_stopped_are_dropped_not_failed(systemd_user, manager):
    u = systemd_user
    u.write_unit("c-here.service", SLEEPER)
    (u.unit_dir / "c-masked.service").symlink_to("/dev/null")
    u.daemon_reload()
    report = ClientController(manager, start_timeout_s=10).start(
        ["c-gone.service", "c-masked.service", "c-here.service"])
    assert report.ok
    assert report.dropped == (("c-gone.service", "not-found"), ("c-masked.service", "masked"))
    assert report.started == ("c-here.service",)


def test_everything_is_enqueued_while_the_target_is_inactive(systemd_user, manager):
    u = systemd_user
    install_target(u, active=False)
    u.write_unit("c-free.service", SLEEPER)
    u.daemon_reload()
    report = ClientController(manager).start(["c-free.service"])
    assert report.enqueued == ("c-free.service",) and report.started == ()


# The oneshot standing in for nvidia-mig-manager.service: it restarts GPU
# clients from inside its own ExecStart, the way the service does.
ONESHOT_SCRIPT = textwrap.dedent(
    """\
    import json, sys
    from migmanagerd.clients.policy import ClientController
    from migmanagerd.clients.systemd import JobTimeout, SystemdManager

    mode, out, own_unit, units = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    manager = SystemdManager.connect()
    result = {}
    if mode == "policy":
        report = ClientController(manager, start_timeout_s=30, manager_service=own_unit).start(units)
        result = {"started": report.started, "enqueued": report.enqueued, "failed": report.failed}
    else:
        try:
            manager.start(units[0], 2.0)
            result["naive"] = "done"
        except JobTimeout as exc:
            result["naive"] = "timeout"
            result["message"] = str(exc)
        result["own_state"] = manager.unit(own_unit).active_state
    with open(out, "w") as f:
        json.dump(result, f)
    """
)


def deadlock_setup(u, mode: str, client_after: str = T):
    script = u.root / "oneshot_restart_clients.py"
    script.write_text(ONESHOT_SCRIPT)
    out = u.root / f"oneshot-{mode}.json"
    out.unlink(missing_ok=True)
    bus = u.env["DBUS_SYSTEM_BUS_ADDRESS"]
    u.write_unit(
        "t-mig.service",
        f"[Unit]\nBefore={T}\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        f"Environment=DBUS_SYSTEM_BUS_ADDRESS={bus}\n"
        f"ExecStart={sys.executable} {script} {mode} {out} t-mig.service c-client.service\n"
        f"StandardOutput=append:{u.root}/t-mig.log\nStandardError=append:{u.root}/t-mig.log\n",
    )
    u.write_unit(T, "[Unit]\nWants=t-mig.service\n")
    u.write_unit("c-client.service", f"[Unit]\nAfter={client_after}\n" + SLEEPER)
    u.daemon_reload()
    return out


def oneshot_log(u) -> str:
    path = u.root / "t-mig.log"
    return path.read_text() if path.exists() else "(no output)"


def test_no_deadlock_restarting_a_client_from_the_oneshot(systemd_user):
    u = systemd_user
    out = deadlock_setup(u, "policy")
    # As at boot: the target's start job waits for the oneshot.
    u.systemctl("start", "--no-block", T)
    u.wait_for("t-mig.service", "active", timeout=20)
    assert u.prop("t-mig.service", "Result") == "success", oneshot_log(u)
    result = json.loads(out.read_text())
    assert result == {"started": [], "enqueued": ["c-client.service"], "failed": []}
    u.wait_for(T, "active")
    u.wait_for("c-client.service", "active")


def test_a_client_ordered_after_the_oneshot_itself_is_enqueued_on_restart(systemd_user):
    """`systemctl restart nvidia-mig-manager` with the target already active: a
    client ordered After= the service (not the target) would wait for the
    running restart job; it is queued instead, and the restart finishes."""
    u = systemd_user
    out = deadlock_setup(u, "policy", client_after="t-mig.service")
    u.systemctl("start", "--no-block", T)
    u.wait_for(T, "active", timeout=20)
    u.wait_for("c-client.service", "active")
    out.unlink()
    u.systemctl("stop", "c-client.service")  # as the run stops it before a change
    u.systemctl("restart", "t-mig.service", timeout=25)
    assert u.prop("t-mig.service", "Result") == "success", oneshot_log(u)
    assert json.loads(out.read_text()) == {"started": [], "enqueued": ["c-client.service"], "failed": []}
    u.wait_for("c-client.service", "active")


def test_naive_blocking_start_from_the_oneshot_deadlocks_until_timeout(systemd_user):
    u = systemd_user
    out = deadlock_setup(u, "naive")
    u.systemctl("start", "--no-block", T)
    try:
        u.wait_for("t-mig.service", "active", timeout=20)
    except (HarnessError, subprocess.SubprocessError):
        raise AssertionError(oneshot_log(u)) from None
    result = json.loads(out.read_text())
    # The client's start job waited for the target, which waited for the
    # oneshot, which was waiting for the client: only the timeout ended it.
    assert result["naive"] == "timeout"
    assert result["own_state"] == "activating"
    assert "c-client.service" in result["message"]


def test_a_reloading_unit_is_stopped_and_restarted(systemd_user, manager):
    u = systemd_user
    u.write_unit("c-reload.service", "[Service]\nExecStart=/bin/sleep 1000\nExecReload=/bin/sleep 30\n")
    u.daemon_reload()
    u.systemctl("start", "c-reload.service")
    u.systemctl("reload", "--no-block", "c-reload.service")
    u.wait_for("c-reload.service", "reloading")
    controller = ClientController(manager, stop_timeout_s=10, start_timeout_s=10)
    report = controller.stop(["c-reload.service"])
    assert report.stopped == ("c-reload.service",)
    assert report.restart == ("c-reload.service",)
    assert u.prop("c-reload.service", "MainPID") == "0"
    assert controller.start(report.restart).started == ("c-reload.service",)
    assert u.prop("c-reload.service", "ActiveState") == "active"


class ScriptedManager:
    """Stands in for a manager whose bus fails in ways a real one will not on
    demand: the target's state cannot be read, and one start job breaks."""

    def __init__(self):
        self.calls = []

    def unit(self, name):
        from migmanagerd.clients.systemd import BusUnavailable

        raise BusUnavailable("cannot load unit nvidia-gpu-reset.target: the D-Bus connection to X closed")

    def enqueue_start(self, name):
        from migmanagerd.clients.systemd import UnitMasked

        self.calls.append(name)
        if name == "b.service":
            raise UnitMasked(name)
        return "/org/freedesktop/systemd1/job/1"


def test_unreadable_target_state_queues_every_start_and_reports_failures():
    mgr = ScriptedManager()
    report = ClientController(mgr).start(["a.service", "b.service", "c.service"])
    assert mgr.calls == ["a.service", "b.service", "c.service"]
    assert report.enqueued == ("a.service", "c.service")
    assert [u for u, _ in report.failed] == ["b.service"]
    assert "masked" in report.failed[0][1]
