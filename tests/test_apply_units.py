"""Smaller pieces of the engine: naming of odd instance shapes, the undo
journal, assert lines, config text."""

from __future__ import annotations

from collections import Counter

from apply_helpers import default_configs, engine, layout, shape, sim_node

from migmanagerd.apply import report as R
from migmanagerd.apply.compare import format_devices
from migmanagerd.apply.configtext import ConfigText, EntryText, render_config_file
from migmanagerd.apply.export import node_config
from migmanagerd.apply.generate import config_name_for
from migmanagerd.apply.rollback import GpuWriter
from migmanagerd.gpu.sim_faults import FAULTS_ENV, PROCESS_FAULTS
from migmanagerd.spec.config import parse_config

GI_3G, GI_2G, GI_1G = 9, 14, 19  # A100-40GB device GI profile ids
CI_1C, CI_2C, CI_FULL_3G = 0, 1, 2


def _enabled(tmp_path, spec="1xA100-SXM4-40GB"):
    backend = sim_node(tmp_path, spec)
    engine(backend).apply(default_configs().configs["all-enabled"])
    return backend


def test_odd_instance_shapes_get_names_no_target_can_equal(tmp_path):
    backend = _enabled(tmp_path)
    gi = backend.create_gpu_instance(0, GI_3G, 0)
    backend.create_compute_instance(0, gi.id, CI_1C)
    backend.create_compute_instance(0, gi.id, CI_1C)
    backend.create_gpu_instance(0, GI_3G, 4)  # no compute instance
    view = engine(backend).observe().gpu(0)
    names = sorted(d.profile for d in view.devices)
    assert names == ["3g.20gb[cis=1c,1c]", "3g.20gb[cis=]"]
    assert all(d.uuid is None for d in view.devices)


def test_partial_compute_instance_is_a_canonical_device(tmp_path):
    backend = _enabled(tmp_path)
    gi = backend.create_gpu_instance(0, GI_3G, 4)
    ci = backend.create_compute_instance(0, gi.id, CI_1C)
    (dev,) = engine(backend).observe().gpu(0).devices
    assert (dev.profile, dev.placement.start, dev.uuid, dev.gi_id) == ("1c.3g.20gb", 4, ci.uuid, gi.id)


def test_apply_replaces_odd_shapes_and_assert_sees_them(tmp_path):
    backend = _enabled(tmp_path)
    gi = backend.create_gpu_instance(0, GI_3G, 0)
    backend.create_compute_instance(0, gi.id, CI_1C)
    backend.create_compute_instance(0, gi.id, CI_1C)
    cfg = parse_config(
        'version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {"3g.20gb": 2}\n',
        "c.yaml",
    ).configs["c"]
    eng = engine(backend)
    assert eng.assert_config(cfg) == ["GPU 0: has 3g.20gb[cis=1c,1c] x1, wants 3g.20gb x2"]
    report = eng.apply(cfg)
    assert report.exit_code == 0
    assert report.result(0).operations == {"destroy_ci": 2, "destroy_gi": 1, "create_gi": 2, "create_ci": 2}
    assert eng.assert_config(cfg) == []


def test_rollback_recreates_multi_ci_instances_exactly(tmp_path, monkeypatch):
    backend = _enabled(tmp_path)
    gi = backend.create_gpu_instance(0, GI_3G, 0)
    backend.create_compute_instance(0, gi.id, CI_1C)
    backend.create_compute_instance(0, gi.id, CI_1C)
    before = layout(backend)
    cfg = default_configs().configs["all-7g.40gb"]
    PROCESS_FAULTS.reset()
    monkeypatch.setenv(FAULTS_ENV, "create_ci:1")
    report = engine(backend).apply(cfg)
    assert report.result(0).status == R.ROLLED_BACK
    assert shape(layout(backend)[0]) == shape(before[0])
    assert [d[0] for d in layout(backend)[0][2]] == ["3g.20gb[cis=1c,1c]"]


class _FreshIds:
    """A backend whose GPU-instance ids are never reused (drivers may do either)."""

    name = "fresh-ids"

    def __init__(self):
        self.next_id = 10
        self.gis = {}  # id -> [profile, start, {ci_id: ci_profile}]
        self.calls = []

    def create_gpu_instance(self, index, profile_id, start):
        from migmanagerd.gpu.backend import GpuInstance

        self.next_id += 1
        self.gis[self.next_id] = [profile_id, start, {}]
        self.calls.append(("create_gi", self.next_id))
        return GpuInstance(self.next_id, profile_id, start, 2)

    def create_compute_instance(self, index, gi_id, ci_profile_id):
        from migmanagerd.gpu.backend import ComputeInstance

        cis = self.gis[gi_id][2]  # KeyError on a stale id
        ci_id = len(cis)
        cis[ci_id] = ci_profile_id
        self.calls.append(("create_ci", gi_id))
        return ComputeInstance(ci_id, ci_profile_id, 0, 2, f"MIG-{gi_id}-{ci_id}")

    def destroy_compute_instance(self, index, gi_id, ci_id):
        del self.gis[gi_id][2][ci_id]

    def destroy_gpu_instance(self, index, gi_id):
        assert not self.gis[gi_id][2]
        del self.gis[gi_id]


def test_writer_undo_maps_recreated_gpu_instance_ids():
    from migmanagerd.gpu.backend import ComputeInstance, GpuInstance

    backend = _FreshIds()
    backend.gis[5] = [GI_2G, 2, {0: CI_1C, 1: CI_1C}]
    original = GpuInstance(5, GI_2G, 2, 2, (ComputeInstance(0, CI_1C, 0, 1, "a"), ComputeInstance(1, CI_1C, 1, 1, "b")))
    w = GpuWriter(backend, 0)
    w.destroy_instance(original)
    w.create_device(GI_2G, 0, CI_2C)
    assert w.rollback() == []
    (gi_id,) = backend.gis
    assert gi_id not in (5, 11)  # a fresh id for the recreation...
    assert backend.gis[gi_id][:2] == [GI_2G, 2]
    assert sorted(backend.gis[gi_id][2].values()) == [CI_1C, CI_1C]  # ...and both CIs went into it
    assert w.ops == Counter({"destroy_ci": 3, "destroy_gi": 2, "create_gi": 2, "create_ci": 3})


def test_writer_undo_reports_each_failure_and_keeps_going(tmp_path, monkeypatch):
    backend = _enabled(tmp_path)
    w = GpuWriter(backend, 0)
    w.create_device(GI_1G, 0, 0)
    w.create_device(GI_1G, 1, 0)
    PROCESS_FAULTS.reset()
    monkeypatch.setenv(FAULTS_ENV, "destroy_gi:1")
    errors = w.rollback()
    assert len(errors) == 1 and "destroy GPU instance" in errors[0]
    # the other device was still removed; the failed GI remains without its CI
    (left,) = backend.gpu_instances(0)
    assert left.start == 1 and left.compute_instances == ()


def test_format_devices_sorts_and_says_none():
    assert format_devices(Counter({"3g.20gb": 1, "1g.5gb": 2})) == "1g.5gb x2, 3g.20gb x1"
    assert format_devices(Counter()) == "none"


def test_config_names_follow_nvidia_spelling():
    assert config_name_for("1g.5gb") == "all-1g.5gb"
    assert config_name_for("1g.5gb+me") == "all-1g.5gb.me"
    assert config_name_for("1g.24gb+me.all") == "all-1g.24gb.me.all"
    assert config_name_for("1g.24gb-me") == "all-1g.24gb-me"


def test_config_text_quotes_what_yaml_would_misread():
    text = render_config_file(
        [
            ConfigText("yes", (EntryText((0, 1), (0x20B010DE,), True, (("1g.5gb", 2),), comment="A100"),)),
            ConfigText("2", (EntryText("all", (), False),)),
            ConfigText("plain-name", (EntryText("all", (), True, ()),)),
        ]
    )
    parsed = parse_config(text, "t.yaml")
    assert list(parsed.configs) == ["yes", "2", "plain-name"]
    e = parsed.configs["yes"].entries[0]
    assert e.devices == (0, 1) and e.device_filters[0].device_id == 0x20B010DE
    assert '"0x20B010DE"' in text and "  plain-name:" in text


def test_export_leaves_out_what_v1_cannot_express(tmp_path):
    backend = _enabled(tmp_path)
    gi = backend.create_gpu_instance(0, GI_3G, 0)
    backend.create_compute_instance(0, gi.id, CI_1C)
    backend.create_compute_instance(0, gi.id, CI_1C)
    backend.create_gpu_instance(0, GI_3G, 4)  # no compute instance: not expressible
    config, warnings = node_config(engine(backend).observe())
    # two CIs sharing one GI are written as the peer writes them
    assert [e.mig_devices for e in config.entries] == [(("1c.3g.20gb", 2),)]
    assert len(warnings) == 1 and "GPU 0" in warnings[0] and "slot 4" in warnings[0]


def test_report_exit_codes():
    ok = R.ApplyReport("c", (R.GpuResult(0, R.APPLIED, {"create_gi": 1}), R.GpuResult(1, R.UNCHANGED)))
    assert ok.exit_code == 0 and ok.changed
    bad = R.ApplyReport("c", (R.GpuResult(0, R.APPLIED), R.GpuResult(1, R.REBOOT_REQUIRED)))
    assert bad.exit_code == 1 and bad.reboot_required == (1,)
    assert "GPU 1 reboot-required" in bad.summary()
