"""The boot-time run hands its result to the integrations, and `status` shows what they did."""

from __future__ import annotations

import json
from pathlib import Path

from node_root import sim_node_root
from prometheus_client.parser import text_string_to_metric_families

from migmanagerd.cli.main import main
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.run import ServiceOptions, ServiceRun
from migmanagerd.service.state import StateStore


class Quiet:
    def status(self, text: str) -> None:
        pass

    def failed(self, text: str) -> None:
        pass

    def extend_timeout(self, seconds: float) -> None:
        pass


def _node(tmp_path, monkeypatch) -> NodePaths:
    paths = sim_node_root(tmp_path, monkeypatch)
    root = Path(str(paths.config_file)[: -len("/etc/nvidia-mig-manager/config.yaml")])
    metrics = root / "var" / "lib" / "node-exporter" / "migmanagerd.prom"
    proc = root / "proc" / "driver" / "nvidia" / "capabilities"
    paths.integrations_file.write_text(
        "version: v1\n"
        f"metrics:\n  enabled: true\n  path: {metrics}\n"
        f"slurm:\n  enabled: true\n  node_name: gpu-07\n  root: {root}\n"
        f"  gres_file: {root}/etc/slurm/gres.conf\n  nodename_file: {root}/etc/slurm/gres.fragment\n"
        "  restart_slurmd: false\n"
    )
    # capability files as the driver exposes them: one per compute instance
    minor = 100
    for gpu in range(2):
        for gi in range(1, 15):
            d = proc / f"gpu{gpu}" / "mig" / f"gi{gi}" / "ci0"
            d.mkdir(parents=True)
            (d / "access").write_text(f"DeviceFileMinor: {minor}\nDeviceFileMode: 292\n")
            minor += 1
    return paths


def test_a_run_writes_metrics_and_gres_and_status_reports_them(tmp_path, monkeypatch, capsys):
    paths = _node(tmp_path, monkeypatch)
    outcome = ServiceRun(ServiceOptions(selected_config="all-balanced"), paths, notifier=Quiet()).run()
    assert outcome.exit_code == 0, outcome.message

    metrics = Path(str(paths.state_dir).replace("nvidia-mig-manager", "node-exporter")) / "migmanagerd.prom"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(metrics.read_text())
        for s in fam.samples
    }
    matched = [v for (name, _), v in samples.items() if name.endswith("matched") or name.endswith("matches")]
    assert matched == [1.0]
    gres = (paths.config_file.parents[1] / "slurm" / "gres.conf").read_text()
    # all-balanced: 2x 1g.5gb, 1x 2g.10gb, 1x 3g.20gb on each of the 2 GPUs
    lines = [line for line in gres.splitlines() if line.startswith("Name=gpu")]
    assert len(lines) == 8
    assert sum("Type=1g.5gb" in line for line in lines) == 4
    assert all("File=/dev/nvidia-caps/nvidia-cap" in line for line in lines)

    stored = StateStore(paths).load().state.integrations
    assert stored["metrics"]["enabled"] is True and stored["slurm"]["enabled"] is True
    assert stored.get("cdi", {}).get("enabled") is False

    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["integrations"]["metrics"] == stored["metrics"]
    assert doc["matches"] is True and doc["selection"]["config"] == "all-balanced"


def test_integrations_run_after_a_run_that_changed_nothing(tmp_path, monkeypatch):
    paths = _node(tmp_path, monkeypatch)
    opts = ServiceOptions(selected_config="all-balanced")
    assert ServiceRun(opts, paths, notifier=Quiet()).run().exit_code == 0
    metrics = Path(str(paths.state_dir).replace("nvidia-mig-manager", "node-exporter")) / "migmanagerd.prom"
    metrics.unlink()
    assert ServiceRun(opts, paths, notifier=Quiet()).run().exit_code == 0
    assert metrics.exists(), "metrics must be rewritten after every run, also one that changed nothing"
