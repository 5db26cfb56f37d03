"""Drain/resume sequencing against tests/fakes/scontrol (a scripted slurmctld stand-in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migmanagerd.integrations.drain import SlurmDrain
from migmanagerd.integrations.layout import RunSummary
from migmanagerd.integrations.scontrol import Scontrol, ScontrolError, parse_show_node
from migmanagerd.integrations.settings import DrainSettings, SlurmSettings

FAKE_SCONTROL = Path(__file__).resolve().parent / "fakes" / "scontrol"
REASON = "migmanagerd: MIG reconfiguration"


class FakeSlurm:
    """The fake's JSON state file, plus a fake clock whose sleep advances time."""

    def __init__(self, path: Path, timeline, *, drain=False, reason=None, fail=()):
        self.path = path
        self.t = 0.0
        self.sleeps: list[float] = []
        self.save({"nodes": {"gpu01": {"timeline": timeline, "drain": drain, "reason": reason}},
                   "fail": list(fail), "calls": []})

    def save(self, db):
        self.path.write_text(json.dumps(db))

    def load(self):
        return json.loads(self.path.read_text())

    @property
    def node(self):
        return self.load()["nodes"]["gpu01"]

    @property
    def calls(self):
        return self.load()["calls"]

    def updates(self):
        return [c for c in self.calls if c[:1] == ["update"]]

    def fail(self, *subcommands):
        db = self.load()
        db["fail"] = list(subcommands)
        self.save(db)

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s

    def monotonic(self):
        return self.t


def busy(n=4, state="MIXED"):
    return {"state": state, "cpu_alloc": n}


IDLE = {"state": "IDLE", "cpu_alloc": 0}


@pytest.fixture
def make(tmp_path, monkeypatch):
    def _make(timeline, *, timeout_s=60, poll_s=10, slurmd_active=None, **kw):
        fake = FakeSlurm(tmp_path / "slurm.json", timeline, **kw)
        monkeypatch.setenv("FAKE_SCONTROL_STATE", str(fake.path))
        settings = SlurmSettings(enabled=True, node_name="gpu01", scontrol=str(FAKE_SCONTROL),
                                 drain=DrainSettings(enabled=True, reason=REASON, timeout_s=timeout_s, poll_s=poll_s))
        progress: list[str] = []
        drain = SlurmDrain(settings, Scontrol(str(FAKE_SCONTROL), timeout_s=20), slurmd_active=slurmd_active,
                           progress=progress.append, sleep=fake.sleep, monotonic=fake.monotonic)
        return fake, drain, progress
    return _make


def ok(config="all-1g.5gb"):
    return RunSummary(config=config, matched=True, result="ok", duration_s=3.0, changed=True)


def failed(config="all-1g.5gb"):
    return RunSummary(config=config, matched=False, result="failed", duration_s=3.0, changed=True)


def test_waits_for_jobs_then_proceeds_and_resumes_after_success(make):
    fake, drain, progress = make([busy(), busy(), busy(2), IDLE])
    assert drain.before_change("all-1g.5gb") is True
    assert fake.updates()[0] == ["update", "NodeName=gpu01", "State=DRAIN",
                                 f"Reason={REASON} (config all-1g.5gb)"]
    assert fake.sleeps == [10, 10]  # the first look drains; two polls see jobs, the third none
    assert len(progress) == 2 and "MIXED+DRAIN" in progress[0]
    assert drain.report["wait"] == "idle"
    assert drain.after_change(ok()) == {"node": "resumed"}
    assert fake.updates()[-1] == ["update", "NodeName=gpu01", "State=RESUME"]
    assert fake.node["drain"] is False


def test_job_that_never_ends_leaves_node_drained_and_forbids_the_change(make):
    fake, drain, _ = make([busy(8, "ALLOCATED")], timeout_s=35, poll_s=10)
    assert drain.before_change("all-1g.5gb") is False
    assert sum(fake.sleeps) == 35 and fake.sleeps == [10, 10, 10, 5]  # bounded by timeout_s
    assert fake.node["drain"] is True
    assert fake.node["reason"].startswith(f"{REASON} (config all-1g.5gb): timed out after 35s")
    assert drain.report["proceed"] is False
    # the service then records a run that did not apply; the node keeps the first cause
    reason = fake.node["reason"]
    out = drain.after_change(RunSummary("all-1g.5gb", False, "skipped", 0.0))
    assert out == {"node": "left-drained", "reason": reason}
    assert fake.node["drain"] is True and fake.node["reason"] == reason


def test_failed_apply_leaves_node_drained_with_reason(make):
    fake, drain, _ = make([IDLE])
    assert drain.before_change("all-1g.5gb") is True
    out = drain.after_change(failed())
    assert out["node"] == "left-drained"
    assert fake.node["drain"] is True
    assert fake.node["reason"] == f"{REASON} (config all-1g.5gb): MIG apply failed; see journalctl -u nvidia-mig-manager"
    assert ["update", "NodeName=gpu01", "State=RESUME"] not in fake.calls


def test_later_failure_in_integration_keeps_node_drained(make):
    fake, drain, _ = make([IDLE])
    drain.before_change("x")
    out = drain.after_change(ok("x"), failure="restart of slurmd.service failed: boom")
    assert out["node"] == "left-drained" and fake.node["reason"].endswith("restart of slurmd.service failed: boom")


def test_operator_drain_is_never_overwritten_or_resumed(make):
    fake, drain, _ = make([busy(), IDLE], drain=True, reason="bad fan on PSU2")
    assert drain.before_change("x") is True
    assert fake.updates() == []
    assert drain.after_change(ok("x"))["node"] == "drained by someone else; left as is"
    assert fake.node == {**fake.node, "drain": True, "reason": "bad fan on PSU2"}


def test_operator_drain_with_jobs_that_never_end_keeps_their_reason(make):
    fake, drain, _ = make([busy()], drain=True, reason="bad fan", timeout_s=20)
    assert drain.before_change("x") is False
    assert fake.updates() == [] and fake.node["reason"] == "bad fan"


def test_slurmctld_unreachable_blocks_the_change_while_slurmd_runs(make):
    fake, drain, _ = make([IDLE], fail=["show"], slurmd_active=lambda: True)
    assert drain.before_change("x") is False
    assert drain.report["drain"] == "failed" and "Unable to contact slurm controller" in drain.report["error"]


def test_slurmctld_unreachable_at_boot_proceeds_since_slurmd_is_not_running(make):
    fake, drain, _ = make([IDLE], fail=["show"], slurmd_active=lambda: False)
    assert drain.before_change("x") is True
    assert drain.report["drain"] == "skipped"


def test_slurmd_not_running_drains_without_waiting(make):
    fake, drain, _ = make([busy()], slurmd_active=lambda: False)
    assert drain.before_change("x") is True
    assert fake.node["drain"] is True and fake.sleeps == []
    # after a reboot in the middle of a mode change the next run finds our drain and resumes it
    assert drain.after_change(ok("x")) == {"node": "resumed"}


def test_lost_controller_while_waiting_gives_up(make):
    fake, drain, _ = make([busy(), busy()])
    original_sleep = drain._sleep

    def sleep_then_fail(s):
        original_sleep(s)
        fake.fail("show")
    drain._sleep = sleep_then_fail
    assert drain.before_change("x") is False
    assert "lost slurmctld" in drain.report["error"]


def test_disabled_drain_makes_no_calls(make, tmp_path):
    fake, drain, _ = make([busy()])
    off = SlurmDrain(SlurmSettings(enabled=True, node_name="gpu01", drain=DrainSettings(enabled=False)),
                     Scontrol(str(FAKE_SCONTROL)))
    assert off.before_change("x") is True
    assert off.after_change(failed()) == {"node": "drain disabled"}
    assert fake.calls == []


def test_unknown_node_is_a_scontrol_error(make, monkeypatch):
    fake, drain, _ = make([IDLE])
    with pytest.raises(ScontrolError, match="exit 1: Node gpu99 not found"):
        Scontrol(str(FAKE_SCONTROL)).show_node("gpu99")


def test_missing_scontrol_binary_is_reported(tmp_path):
    with pytest.raises(ScontrolError, match="not found"):
        Scontrol(str(tmp_path / "nope")).show_node("gpu01")


def test_parse_show_node_reads_state_alloc_and_reason():
    text = ("NodeName=gpu01 Arch=x86_64 CPUAlloc=0 CPUTot=8 State=IDLE+COMPLETING+DRAIN "
            "CfgTRES=cpu=8 Reason=migmanagerd: MIG reconfiguration [root@2026-11-21T05:00:00] Comment=(null)")
    s = parse_show_node("gpu01", text)
    assert (s.base_state, s.flags, s.cpu_alloc) == ("IDLE", frozenset({"COMPLETING", "DRAIN"}), 0)
    assert s.reason == "migmanagerd: MIG reconfiguration"
    assert s.drained and s.busy  # COMPLETING still holds the node
    assert not parse_show_node("n", "State=DOWN+DRAIN CPUAlloc=0").busy
    with pytest.raises(ScontrolError, match="no State="):
        parse_show_node("n", "garbage")


def test_zero_timeout_changes_only_an_idle_node(make):
    fake, drain, _ = make([busy()], timeout_s=0)
    assert drain.before_change("x") is False and fake.sleeps == []
    assert "timed out after 0s" in fake.node["reason"]
    fake2, idle_drain, _ = make([IDLE], timeout_s=0)
    assert idle_drain.before_change("x") is True


def test_unreachable_controller_after_the_run_is_reported_not_raised_by_apply_slurm(make, tmp_path):
    from migmanagerd.integrations.layout import NodeLayout
    from migmanagerd.integrations.slurm import apply_slurm

    fake, drain, _ = make([IDLE])
    drain.before_change("x")
    fake.fail("show", "update")
    settings = drain.settings.__class__(**{**drain.settings.__dict__, "gres_file": str(tmp_path / "g.conf"),
                                           "nodename_file": str(tmp_path / "frag")})
    restarted: list[str] = []
    out = apply_slurm(settings, NodeLayout(), ok("x"), drain=drain, restart_unit=restarted.append,
                      unit_active=lambda unit: True)
    assert restarted == ["slurmd.service"]  # the new (empty) gres file was written first
    assert out["status"] == "failed" and "Unable to contact slurm controller" in out["node_error"]
    assert fake.node["drain"] is True  # stays drained until a later run or an operator resumes it
