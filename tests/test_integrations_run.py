"""run_integrations end to end: fake procfs, fake scontrol, recorded systemd calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from migmanagerd.clients.systemd import SystemdError
from migmanagerd.integrations.layout import GpuLayout, MigDeviceInfo, NodeLayout, RunSummary
from migmanagerd.integrations.run import make_slurm_drain, run_integrations
from migmanagerd.integrations.settings import parse_integrations

FAKE_SCONTROL = Path(__file__).resolve().parent / "fakes" / "scontrol"
LAYOUT = NodeLayout((
    GpuLayout(0, "A100-SXM4-40GB", "GPU-aaa", True, (MigDeviceInfo(0, 1, 0, "3g.20gb", "MIG-a"),
                                                      MigDeviceInfo(0, 2, 0, "3g.20gb", "MIG-b"))),
    GpuLayout(1, "A100-SXM4-40GB", "GPU-bbb", False),
))


class Node:
    """Everything the service would hand over, recorded."""

    def __init__(self, tmp_path: Path, monkeypatch, *, slurmd_active=True, cdi_unit=True, timeline=None):
        self.tmp = tmp_path
        root = tmp_path / "root"
        for rel, minor in {"gpu0/mig/gi1/ci0": 13, "gpu0/mig/gi2/ci0": 22}.items():
            p = root / "proc/driver/nvidia/capabilities" / rel / "access"
            p.parent.mkdir(parents=True)
            p.write_text(f"DeviceFileMinor: {minor}\nDeviceFileMode: 292\n")
        self.state = tmp_path / "slurm.json"
        self.state.write_text(json.dumps({"nodes": {"gpu01": {
            "timeline": timeline or [{"state": "IDLE", "cpu_alloc": 0}], "drain": False, "reason": None}}}))
        monkeypatch.setenv("FAKE_SCONTROL_STATE", str(self.state))
        self.settings = parse_integrations(f"""\
version: v1
slurm:
  enabled: true
  node_name: gpu01
  gres_file: {tmp_path}/etc/slurm/gres.conf
  nodename_file: {tmp_path}/etc/slurm/gres.fragment
  scontrol: {FAKE_SCONTROL}
  root: {root}
  drain: {{enabled: true, timeout_s: 30, poll_s: 10}}
cdi:
  enabled: true
metrics:
  enabled: true
  path: {tmp_path}/prom/migmanagerd.prom
""", "integrations.yaml")
        self.restarted: list[str] = []
        self.enqueued: list[str] = []
        self.slurmd_active = slurmd_active
        self.cdi_unit = cdi_unit
        self.restart_error: Exception | None = None

    def restart_unit(self, unit):
        if self.restart_error:
            raise self.restart_error
        self.restarted.append(unit)

    def unit_active(self, unit):
        assert unit == "slurmd.service"
        return self.slurmd_active

    def unit_exists(self, unit):
        return self.cdi_unit and unit == "nvidia-cdi-refresh.service"

    def run(self, summary, settings=None):
        return run_integrations(settings or self.settings, LAYOUT, summary, restart_unit=self.restart_unit,
                                enqueue_restart=self.enqueued.append, unit_exists=self.unit_exists,
                                unit_active=self.unit_active, now=lambda: 1234.0)

    @property
    def slurm_node(self):
        return json.loads(self.state.read_text())["nodes"]["gpu01"]

    def metric(self, name):
        text = (self.tmp / "prom/migmanagerd.prom").read_text()
        return {tuple(sorted(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples if s.name == name}


OK = RunSummary("half-3g", True, "ok", 40.0, clients_stopped=2, operations={"create_gpu_instance": 2}, changed=True)
FAILED = RunSummary("half-3g", False, "failed", 40.0, clients_stopped=2, changed=True)


def test_successful_change_updates_slurm_cdi_and_metrics(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch)
    drain = make_slurm_drain(node.settings, unit_active=node.unit_active, sleep=pytest.fail)
    assert drain.before_change("half-3g") is True and node.slurm_node["drain"] is True

    report = node.run(OK)
    json.dumps(report)  # goes into state.json as it is
    slurm = report["slurm"]
    assert slurm["status"] == "ok" and slurm["node"] == "resumed"
    assert slurm["gres"] == "gpu:3g.20gb:2,gpu:a100-sxm4-40gb:1" and slurm["slurmd"] == "restarted"
    assert node.restarted == ["slurmd.service"]
    assert node.slurm_node["drain"] is False
    assert "Name=gpu Type=3g.20gb File=/dev/nvidia-caps/nvidia-cap22" in (tmp_path / "etc/slurm/gres.conf").read_text()
    assert (tmp_path / "etc/slurm/gres.fragment").read_text() == "Gres=gpu:3g.20gb:2,gpu:a100-sxm4-40gb:1\n"
    assert report["cdi"]["action"] == "restart-unit" and node.enqueued == ["nvidia-cdi-refresh.service"]
    assert report["metrics"]["status"] == "ok"
    assert node.metric("migmanagerd_last_run_success") == {(): 1.0}
    assert node.metric("migmanagerd_last_run_timestamp_seconds") == {(): 1234.0}

    # the same layout again: files unchanged, slurmd left alone
    again = node.run(RunSummary("half-3g", True, "ok", 1.0))
    assert again["slurm"]["files_changed"] is False and node.restarted == ["slurmd.service"]
    assert again["cdi"]["action"] == "none" and node.enqueued == ["nvidia-cdi-refresh.service"]


def test_failed_apply_keeps_old_files_and_node_drained(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch)
    make_slurm_drain(node.settings, unit_active=node.unit_active).before_change("half-3g")
    report = node.run(FAILED)
    assert report["slurm"]["files"] == "not written: run result failed"
    assert not (tmp_path / "etc/slurm/gres.conf").exists()
    assert report["slurm"]["node"] == "left-drained" and node.slurm_node["drain"] is True
    assert "MIG apply failed" in node.slurm_node["reason"]
    assert node.restarted == []
    assert report["cdi"]["status"] == "enqueued"  # devices did change, so the spec is stale
    assert node.metric("migmanagerd_last_run_success") == {(): 0.0}


def test_slurmd_not_running_is_not_restarted(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch, slurmd_active=False)
    report = node.run(OK)
    assert node.restarted == [] and "not running" in report["slurm"]["slurmd"]
    assert report["slurm"]["status"] == "ok"


def test_slurmd_restart_failure_keeps_node_drained(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch)
    make_slurm_drain(node.settings, unit_active=node.unit_active).before_change("half-3g")
    node.restart_error = SystemdError("Unit slurmd.service failed")
    report = node.run(OK)
    assert report["slurm"]["status"] == "failed"
    assert report["slurm"]["error"] == "restart of slurmd.service failed: Unit slurmd.service failed"
    assert node.slurm_node["drain"] is True and node.slurm_node["reason"].endswith("Unit slurmd.service failed")


def test_one_integration_failing_does_not_stop_the_others_or_raise(tmp_path, monkeypatch, caplog):
    node = Node(tmp_path, monkeypatch)
    (tmp_path / "prom").write_text("a file where the directory should be")
    # missing capability file -> slurm integration fails too
    (tmp_path / "root/proc/driver/nvidia/capabilities/gpu0/mig/gi2/ci0/access").unlink()
    with caplog.at_level("WARNING", logger="migmanagerd"):
        report = node.run(OK)
    assert report["metrics"]["status"] == "failed" and report["metrics"]["error"]
    assert report["slurm"]["status"] == "failed" and "gi2/ci0/access" in report["slurm"]["error"]
    assert report["cdi"]["status"] == "enqueued"
    assert any("metrics integration failed" in r.getMessage() for r in caplog.records)


def test_unexpected_exception_in_a_callable_is_contained(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch)

    def broken(unit):
        raise ConnectionError("system bus gone")
    report = run_integrations(node.settings, LAYOUT, OK, restart_unit=node.restart_unit,
                              enqueue_restart=broken, unit_exists=node.unit_exists, unit_active=node.unit_active)
    assert report["cdi"] == {"enabled": True, "status": "failed", "error": "system bus gone"}
    assert report["slurm"]["status"] == "ok"


def test_a_bug_in_an_integration_is_contained_and_logged_with_its_traceback(tmp_path, monkeypatch, caplog):
    node = Node(tmp_path, monkeypatch)

    def buggy(unit):
        raise KeyError("no such key")
    with caplog.at_level("WARNING", logger="migmanagerd"):
        report = run_integrations(node.settings, LAYOUT, OK, restart_unit=node.restart_unit,
                                  enqueue_restart=buggy, unit_exists=node.unit_exists, unit_active=node.unit_active)
    assert report["cdi"] == {"enabled": True, "status": "failed", "error": "'no such key'"}
    assert report["slurm"]["status"] == "ok"
    bug = [r for r in caplog.records if "cdi integration failed unexpectedly" in r.getMessage()]
    assert bug and bug[0].levelname == "ERROR" and bug[0].exc_info is not None


def test_all_disabled_does_nothing():
    settings = parse_integrations("", "integrations.yaml")
    report = run_integrations(settings, LAYOUT, OK, restart_unit=pytest.fail, enqueue_restart=pytest.fail,
                              unit_exists=pytest.fail)
    assert report == {"slurm": {"enabled": False}, "cdi": {"enabled": False}, "metrics": {"enabled": False}}
    assert make_slurm_drain(settings).before_change("x") is True
