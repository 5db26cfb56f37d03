"""The textfile-collector file parses with prometheus_client's parser and says what happened."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from migmanagerd.integrations.layout import GpuLayout, MigDeviceInfo, NodeLayout, RunSummary
from migmanagerd.integrations.metrics import write_metrics

LAYOUT = NodeLayout((
    GpuLayout(0, "A100-SXM4-40GB", "GPU-aaa", True,
              tuple(MigDeviceInfo(0, gi, 0, "1g.5gb", f"MIG-{gi}") for gi in (7, 8, 9))
              + (MigDeviceInfo(0, 2, 0, "3g.20gb", "MIG-2"),)),
    GpuLayout(1, 'Odd "name"\\x', "GPU-bbb", False),
))
SUMMARY = RunSummary(config="mixed", matched=True, result="ok", duration_s=12.5, clients_stopped=3,
                     operations={"create_gpu_instance": 4, "destroy_gpu_instance": 1}, changed=True)


def samples(path):
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_file_parses_and_holds_expected_samples(tmp_path):
    path = tmp_path / "collector" / "migmanagerd.prom"
    assert write_metrics(str(path), LAYOUT, SUMMARY, now=1_700_000_000.0) == {"path": str(path), "status": "ok"}
    got = samples(path)
    assert got[("migmanagerd_selected_config_info", (("config", "mixed"),))] == 1
    assert got[("migmanagerd_node_matches", ())] == 1
    assert got[("migmanagerd_gpu_mig_enabled", (("gpu", "0"), ("model", "A100-SXM4-40GB"), ("uuid", "GPU-aaa")))] == 1
    assert got[("migmanagerd_gpu_mig_enabled", (("gpu", "1"), ("model", 'Odd "name"\\x'), ("uuid", "GPU-bbb")))] == 0
    assert got[("migmanagerd_gpu_mig_devices", (("gpu", "0"), ("profile", "1g.5gb")))] == 3
    assert got[("migmanagerd_gpu_mig_devices", (("gpu", "0"), ("profile", "3g.20gb")))] == 1
    assert not any(k[0] == "migmanagerd_gpu_mig_devices" and ("gpu", "1") in k[1] for k in got)
    assert got[("migmanagerd_last_run_success", ())] == 1
    assert got[("migmanagerd_last_run_result_info", (("result", "ok"),))] == 1
    assert got[("migmanagerd_last_run_changed", ())] == 1
    assert got[("migmanagerd_last_run_duration_seconds", ())] == 12.5
    assert got[("migmanagerd_last_run_clients_stopped", ())] == 3
    assert got[("migmanagerd_last_run_operations", (("operation", "create_gpu_instance"),))] == 4
    assert got[("migmanagerd_last_run_operations", (("operation", "destroy_gpu_instance"),))] == 1
    assert got[("migmanagerd_last_run_timestamp_seconds", ())] == 1_700_000_000.0
    assert list(path.parent.iterdir()) == [path]  # the temp file was renamed, not left behind


def test_failed_run_without_config(tmp_path):
    path = tmp_path / "m.prom"
    summary = RunSummary(config=None, matched=False, result="failed", duration_s=0.25)
    write_metrics(str(path), NodeLayout(), summary, now=5.0)
    got = samples(path)
    assert not any(k[0] == "migmanagerd_selected_config_info" for k in got)
    assert got[("migmanagerd_node_matches", ())] == 0
    assert got[("migmanagerd_last_run_success", ())] == 0
    assert got[("migmanagerd_last_run_result_info", (("result", "failed"),))] == 1
    assert math.isclose(got[("migmanagerd_last_run_duration_seconds", ())], 0.25)


def test_rewrite_replaces_previous_content(tmp_path):
    path = tmp_path / "m.prom"
    write_metrics(str(path), LAYOUT, SUMMARY, now=1.0)
    write_metrics(str(path), NodeLayout(), RunSummary("other", True, "ok", 1.0), now=2.0)
    got = samples(path)
    assert got[("migmanagerd_selected_config_info", (("config", "other"),))] == 1
    assert ("migmanagerd_selected_config_info", (("config", "mixed"),)) not in got
    assert got[("migmanagerd_last_run_timestamp_seconds", ())] == 2.0
