"""Attacks at run time (issue 14 items 5, 6, 8, 9 and 16): a GPU process in a
user's manager, an operator's drain that looks like ours, timeouts that
overflow, hooks and commands that leave daemons behind, and names that carry
terminal control sequences."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from harden_support import make_node, write
from test_integrations_drain import FAKE_SCONTROL, IDLE, REASON, FakeSlurm

from migmanagerd.clients.clientset import parse_clients
from migmanagerd.clients.discovery import GpuBusy, GpuHolder, check_holders
from migmanagerd.errors import SpecError
from migmanagerd.hooks.runner import HookFailed, HookRunner
from migmanagerd.integrations.cdi import cdi_action, perform_cdi_action
from migmanagerd.integrations.drain import SlurmDrain
from migmanagerd.integrations.layout import RunSummary
from migmanagerd.integrations.scontrol import Scontrol
from migmanagerd.integrations.settings import CdiSettings, DrainSettings, SlurmSettings, parse_integrations
from migmanagerd.spec.hooks import parse_hooks

# --- 5: discover: stop never stops a person's manager or session ---------------------


@pytest.mark.parametrize("unit", ["user@1000.service", "user-runtime-dir@1000.service"])
def test_discover_stop_refuses_user_managers_with_the_pid(unit):
    holder = GpuHolder(gpu_index=0, pid=4242, cmdline="python train.py", unit=unit)
    with pytest.raises(GpuBusy) as info:
        check_holders([holder], listed_units=(), discover="stop")
    assert "PID 4242" in str(info.value) and unit in str(info.value)


@pytest.mark.parametrize("unit", ["session-3.scope", "init.scope"])
def test_control_scopes_are_still_refused(unit):
    holder = GpuHolder(gpu_index=0, pid=4242, cmdline="bash", unit=unit)
    with pytest.raises(GpuBusy, match="PID 4242"):
        check_holders([holder], listed_units=(), discover="stop")


def test_control_discover_stop_still_stops_a_system_service():
    holder = GpuHolder(gpu_index=0, pid=4242, cmdline="dcgm", unit="dcgm.service")
    assert check_holders([holder], listed_units=(), discover="stop") == ("dcgm.service",)


# --- 6: only a drain this service set is resumed ---------------------------------------


def _drain(tmp_path: Path, monkeypatch, **node) -> tuple[FakeSlurm, SlurmDrain]:
    fake = FakeSlurm(tmp_path / "slurm.json", [IDLE], **node)
    monkeypatch.setenv("FAKE_SCONTROL_STATE", str(fake.path))
    settings = SlurmSettings(enabled=True, node_name="gpu01", scontrol=str(FAKE_SCONTROL),
                             drain=DrainSettings(enabled=True, reason=REASON, timeout_s=60, poll_s=10))
    return fake, SlurmDrain(settings, Scontrol(str(FAKE_SCONTROL), timeout_s=20), sleep=fake.sleep,
                            monotonic=fake.monotonic)


def _ok(config: str = "x") -> RunSummary:
    return RunSummary(config=config, matched=True, result="ok", duration_s=1.0, changed=True)


def test_operator_drain_with_our_prefix_is_not_resumed(tmp_path, monkeypatch):
    operator_reason = f"{REASON}: hold for the fan swap"
    fake, drain = _drain(tmp_path, monkeypatch, drain=True, reason=operator_reason)
    assert drain.before_change("x") is True
    assert fake.updates() == [], "the operator's reason was overwritten"
    assert drain.after_change(_ok())["node"] == "drained by someone else; left as is"
    assert fake.node["drain"] is True and fake.node["reason"] == operator_reason


def test_control_our_own_drain_is_resumed_by_a_later_run(tmp_path, monkeypatch):
    fake, first = _drain(tmp_path, monkeypatch)
    assert first.before_change("x") is True and fake.node["drain"] is True
    # the next boot (after a mode-change reboot) is a new process and a new SlurmDrain
    later = SlurmDrain(first.settings, Scontrol(str(FAKE_SCONTROL), timeout_s=20))
    assert later.after_change(_ok()) == {"node": "resumed"}
    assert fake.node["drain"] is False


# --- 8: timeouts that overflow are refused where they are read ---------------------------


@pytest.mark.parametrize("key, value", [("stop-timeout", 4294967), ("start-timeout", 5000000)])
def test_client_timeouts_are_bounded(key, value):
    with pytest.raises(SpecError, match=rf"c.yaml:2:\d+: field '{key}': must be at most 86400 seconds"):
        parse_clients(f"version: v1\n{key}: {value}\n", "c.yaml")


def test_integration_timeouts_are_bounded():
    with pytest.raises(SpecError, match="cdi.timeout_s.*at most 86400"):
        parse_integrations("version: v1\ncdi:\n  timeout_s: 99999999\n", "i.yaml")


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("value", ["1e12", "86401"])
def test_hook_timeout_out_of_range_is_exit_2(tmp_path, monkeypatch, how, value):
    node = make_node(tmp_path, monkeypatch)
    args = ["service", "-c", "all-balanced"]
    env = {}
    if how == "flag":
        args += ["--hook-timeout", value]
    else:
        env["MIGMANAGERD_HOOK_TIMEOUT"] = value
    proc = node.run(*args, extra_env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "OverflowError" not in proc.stderr
    assert "--hook-timeout or MIGMANAGERD_HOOK_TIMEOUT" in proc.stderr


# --- 9: a timed-out command's daemons are killed too -----------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _pid_from(path: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written")


def _wait_dead(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


# a daemon in its own session, with its output away from the hook's pipe: the
# process group kill and the pipe both miss it
DAEMON = "setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' </dev/null >/dev/null 2>&1 & sleep 300"


def test_hook_timeout_kills_its_setsid_daemon(tmp_path):
    pidfile = tmp_path / "daemon.pid"
    hooks = parse_hooks(
        "version: v1\nhooks:\n  apply-start:\n  - command: /bin/sh\n"
        f"    args: ['-c', \"{DAEMON.format(pidfile=pidfile)}\"]\n", "h.yaml")
    with pytest.raises(HookFailed) as info:
        HookRunner(hooks, {}, timeout_s=1).run("apply-start")
    daemon = _pid_from(pidfile)
    try:
        assert _wait_dead(daemon), f"the hook's daemon (PID {daemon}) outlived its timeout"
        assert f"PID {daemon}" in str(info.value) or "killed" in str(info.value)
        assert "could not be killed" not in str(info.value)
    finally:
        if _alive(daemon):
            os.kill(daemon, 9)


def test_cdi_command_timeout_kills_its_daemon(tmp_path):
    pidfile = tmp_path / "daemon.pid"
    settings = CdiSettings(enabled=True, unit=None, command=("/bin/sh", "-c", DAEMON.format(pidfile=pidfile)),
                           timeout_s=1)
    report = perform_cdi_action(cdi_action(settings, True, False), settings, enqueue_restart=pytest.fail)
    daemon = _pid_from(pidfile)
    try:
        assert report["status"] == "failed" and "timed out" in report["error"]
        assert _wait_dead(daemon), f"cdi.command's daemon (PID {daemon}) outlived its timeout"
    finally:
        if _alive(daemon):
            os.kill(daemon, 9)


def test_scontrol_timeout_kills_its_children(tmp_path):
    pidfile = tmp_path / "daemon.pid"
    fake = write(tmp_path / "scontrol", f"#!/bin/sh\n{DAEMON.format(pidfile=pidfile)}\n", mode=0o755)
    with pytest.raises(Exception, match="no answer within 1s"):
        Scontrol(str(fake), timeout_s=1).show_node("gpu01")
    daemon = _pid_from(pidfile)
    try:
        assert _wait_dead(daemon), f"scontrol's child (PID {daemon}) outlived its timeout"
    finally:
        if _alive(daemon):
            os.kill(daemon, 9)


# --- 16: names with control characters are printed escaped -------------------------------


def test_escape_sequences_in_a_config_name_are_printed_escaped(tmp_path, monkeypatch):
    node = make_node(tmp_path, monkeypatch)
    proc = node.run("apply", "-c", "evil\x1b[2J\x1b]0;pwned\x07")
    assert proc.returncode == 2
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "\\x1b[2J" in proc.stderr


def test_dangling_metrics_directory_says_so(tmp_path, monkeypatch):
    node = make_node(tmp_path, monkeypatch)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.symlink_to(tmp_path / "gone")
    write(node.etc / "integrations.yaml",
          f"version: v1\nmetrics:\n  enabled: true\n  path: {metrics_dir}/migmanagerd.prom\n")
    proc = node.run("service", "-c", "all-balanced")
    assert proc.returncode == 0, proc.stderr
    assert "File exists" not in proc.stderr
    assert f"{metrics_dir} is a dangling symlink" in proc.stderr


# --- 10: the finally of a change holds for every exception ------------------------------


def test_apply_exit_runs_when_restarting_clients_hits_a_full_disk(tmp_path, monkeypatch):
    """The journal write after the client restarts fails with ENOSPC (a disk
    that fills after the mode change; a full file system cannot be made
    without a mount, so the write is made to fail): apply-exit must run."""
    from migmanagerd.service import client_journal
    from migmanagerd.service.run import ServiceOptions, ServiceRun

    node = make_node(tmp_path, monkeypatch)
    trail = tmp_path / "trail"
    write(node.etc / "hooks.yaml", "version: v1\nhooks:\n" + "".join(
        f"  {h}:\n  - command: /bin/sh\n    args: ['-c', 'echo {h} >> {trail}']\n" for h in ("apply-start", "apply-exit")))

    def full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(client_journal.ClientJournal, "restart", full)
    outcome = ServiceRun(ServiceOptions(selected_config="all-balanced"), node.paths).run()
    assert trail.read_text().splitlines() == ["apply-start", "apply-exit"]
    assert outcome.exit_code == 1 and "No space left on device" in outcome.message


# --- 12: a name the selection cannot hold is refused before anything runs ----------------


def test_apply_with_a_name_the_dropin_cannot_hold_changes_nothing(tmp_path, monkeypatch):
    node = make_node(tmp_path, monkeypatch)
    config = node.etc / "config.yaml"
    write(config, config.read_text() + "  a$b:\n  - devices: all\n    mig-enabled: true\n"
                                       "    mig-devices: {3g.20gb: 2}\n")
    trail = tmp_path / "trail"
    write(node.etc / "hooks.yaml",
          f"version: v1\nhooks:\n  apply-start:\n  - command: /bin/sh\n    args: ['-c', 'echo ran > {trail}']\n")
    before = (tmp_path / "sim.json").read_bytes()
    proc = node.run("apply", "-c", "a$b")
    assert proc.returncode == 2, proc.stderr
    assert "not a plain name" in proc.stderr
    assert (tmp_path / "sim.json").read_bytes() == before and not trail.exists()
    assert node.run("service", "-c", "a$b").returncode == 0, "the unit (no selection to write) still applies it"
