"""The apply engine end to end on simulated nodes, with the shipped config.yaml."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from apply_helpers import (
    A100_NODE,
    MIXED_NODE,
    default_configs,
    engine,
    layout,
    multiset,
    ops,
    sim_node,
    unfiltered_configs,
)

from migmanagerd.apply import report as R
from migmanagerd.errors import UsageError
from migmanagerd.spec.config import parse_config

pytestmark = pytest.mark.usefixtures("both_backends")  # sim, and NVML through the stand-in

# Which of config/config.yaml's configs fit each node (every GPU they select).
# Written out so a catalog or planner regression that rejects a good config
# (or accepts a bad one) fails here.
A100_FITS = {
    "all-disabled", "all-enabled", "all-1g.5gb", "all-1g.5gb.me", "all-2g.10gb",
    "all-3g.20gb", "all-4g.20gb", "all-7g.40gb", "all-1g.10gb", "all-balanced",
}
H100_FITS = {
    "all-disabled", "all-enabled", "all-1g.10gb", "all-1g.10gb.me", "all-1g.20gb", "all-2g.20gb",
    "all-3g.40gb", "all-4g.40gb", "all-7g.80gb", "all-balanced",
}
A30_FITS = {
    "all-disabled", "all-enabled", "all-1g.6gb", "all-1g.6gb.me", "all-2g.12gb", "all-2g.12gb.me",
    "all-4g.24gb", "all-balanced",
}
# Each per-profile config is filtered to the models that have the profile, so
# on a mixed node it takes the GPUs it names and leaves the others alone.
MIXED_FITS = A100_FITS | H100_FITS | A30_FITS


def _classify(eng) -> tuple[set[str], set[str]]:
    """(configs that fit and select some GPU here, configs whose device-filters select no GPU here)."""
    state = eng.observe()
    fits, none = set(), set()
    for name, cfg in default_configs().configs.items():
        plan = eng.plan(cfg, state=state)
        if plan.feasible:
            (fits if plan.selected_gpus else none).add(name)
    return fits, none


@pytest.mark.parametrize(
    "spec,expected",
    [(A100_NODE, A100_FITS), (MIXED_NODE, MIXED_FITS), ("2xH100-80GB", H100_FITS), ("2xA30-24GB", A30_FITS)],
)
def test_every_shipped_config_applies_or_is_refused_untouched(tmp_path, spec, expected):
    backend = sim_node(tmp_path, spec)
    eng = engine(backend)
    fits, selects_none = _classify(eng)
    assert fits == expected
    configs = default_configs().configs
    # Filtered for other models only: valid here, and applying it changes nothing.
    for name in sorted(selects_none):
        assert eng.apply(configs[name]).gpus == ()
    assert ops(backend) == {}
    # Apply the fitting ones one after another (each a transition from the last),
    # and try every non-fitting one in between: refused, nothing touched.
    refused = [c for n, c in configs.items() if n not in expected | selects_none]
    for name in sorted(expected):
        config = configs[name]
        report = eng.apply(config)
        assert report.exit_code == 0, report.gpus
        assert eng.assert_config(config) == []
        before_ops, before = ops(backend), layout(backend)
        again = eng.apply(config)
        assert ops(backend) == before_ops, f"second apply of {name} wrote to the GPUs"
        assert all(r.status == R.UNCHANGED for r in again.gpus)
        for bad in refused[:6]:
            with pytest.raises(UsageError) as err:
                eng.apply(bad)
            assert f"config '{bad.name}' does not fit" in str(err.value)
            assert re.search(r"GPUs? \d", str(err.value))
            assert ops(backend) == before_ops and layout(backend) == before
        refused = refused[6:] + refused[:6]


def test_refusal_names_each_gpu_that_cannot_take_the_config(tmp_path):
    backend = sim_node(tmp_path, MIXED_NODE)
    eng = engine(backend)
    plan = eng.plan(unfiltered_configs().configs["all-1g.5gb"])
    assert not plan.feasible
    # A30s (2, 3) and H100s (4, 5) have no 1g.5gb; the A100s (0, 1) would be fine.
    bad = sorted(int(e.split()[1]) for e in plan.errors)
    assert bad == [2, 3, 4, 5]
    assert all("1g.5gb" in e for e in plan.errors)


def test_apply_reports_per_gpu_operations_and_statuses(tmp_path):
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    eng = engine(backend)
    report = eng.apply(default_configs().configs["all-balanced"])
    assert [r.status for r in report.gpus] == [R.APPLIED, R.APPLIED]
    for r in report.gpus:
        # disabled -> enabled (1 set, 1 reset) then 4 devices (GI + CI each)
        assert r.operations == {"set_mode": 1, "reset": 1, "create_gi": 4, "create_ci": 4}
    assert ops(backend) == {"set_mode": 2, "reset": 2, "create_gi": 8, "create_ci": 8}
    assert all(multiset(v) == Counter({"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}) for v in layout(backend).values())


def test_transition_keeps_uuids_of_instances_that_stay(tmp_path):
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    eng = engine(backend)
    configs = default_configs().configs
    eng.apply(configs["all-balanced"])
    three_g = {i: [d for d in v[2] if d[0] == "3g.20gb"][0] for i, v in layout(backend).items()}
    before_ops = ops(backend)
    report = eng.apply(configs["all-3g.20gb"])
    assert report.exit_code == 0
    after = layout(backend)
    for i, dev in three_g.items():
        assert dev in after[i][2], f"GPU {i}: the 3g.20gb at slot {dev[1]} was recreated"
        assert dev[3] in report.result(i).kept_uuids
    spent = Counter(ops(backend)) - Counter(before_ops)
    # Per GPU: destroy 1g, 1g, 2g (3 CIs + 3 GIs), create one 3g (GI + CI); no mode change.
    assert spent == Counter({"destroy_ci": 6, "destroy_gi": 6, "create_gi": 2, "create_ci": 2})


def test_assert_lines_name_gpu_mode_and_devices(tmp_path):
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    eng = engine(backend)
    configs = default_configs().configs
    assert eng.assert_config(configs["all-balanced"]) == [
        "GPU 0: MIG mode is disabled, config 'all-balanced' wants enabled",
        "GPU 1: MIG mode is disabled, config 'all-balanced' wants enabled",
    ]
    eng.apply(configs["all-1g.5gb"])
    assert eng.assert_config(configs["all-balanced"]) == [
        "GPU 0: has 1g.5gb x7, wants 1g.5gb x2, 2g.10gb x1, 3g.20gb x1",
        "GPU 1: has 1g.5gb x7, wants 1g.5gb x2, 2g.10gb x1, 3g.20gb x1",
    ]
    assert eng.assert_config(configs["all-balanced"], mode_only=True) == []
    assert eng.assert_config(configs["all-1g.5gb"]) == []


def test_pending_mode_counts_as_not_applied(tmp_path):
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    eng = engine(backend)
    config = default_configs().configs["all-enabled"]
    report = eng.apply(config, skip_reset=True)
    assert report.result(0).status == R.MODE_PENDING
    assert report.exit_code == 1
    assert eng.assert_config(config) == [
        "GPU 0: MIG mode is disabled (enabled pending a GPU reset), config 'all-enabled' wants enabled"
    ]
    # The next apply only needs the reset.
    before = Counter(ops(backend))
    assert eng.apply(config).exit_code == 0
    assert Counter(ops(backend)) - before == Counter({"reset": 1})


def test_assert_ignores_placement(tmp_path):
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    eng = engine(backend)
    eng.apply(default_configs().configs["all-enabled"])
    # 2g.10gb at slot 4 instead of where the planner would put it.
    gi = backend.create_gpu_instance(0, 14, 4)
    backend.create_compute_instance(0, gi.id, 1)
    cfg = parse_config(
        'version: v1\nmig-configs:\n  one:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {"2g.10gb": 1}\n',
        "t.yaml",
    ).configs["one"]
    assert eng.assert_config(cfg) == []
    assert eng.plan(cfg).needs_change is False


def test_disable_destroys_instances_then_switches_mode(tmp_path):
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    eng = engine(backend)
    configs = default_configs().configs
    eng.apply(configs["all-balanced"])
    before = Counter(ops(backend))
    report = eng.apply(configs["all-disabled"])
    assert report.exit_code == 0
    assert Counter(ops(backend)) - before == Counter(
        {"destroy_ci": 8, "destroy_gi": 8, "set_mode": 2, "reset": 2}
    )
    assert all(v == (False, False, ()) for v in layout(backend).values())


def test_hopper_mode_change_needs_no_reset(tmp_path):
    backend = sim_node(tmp_path, "2xH100-80GB")
    eng = engine(backend)
    report = eng.apply(default_configs().configs["all-balanced"])
    assert report.exit_code == 0
    assert "reset" not in ops(backend)
    assert report.mode.reset == ()


def test_reset_unavailable_reports_reboot_required_and_touches_no_geometry(tmp_path):
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB", no_reset=True)
    eng = engine(backend)
    report = eng.apply(default_configs().configs["all-balanced"])
    assert report.exit_code == 1
    assert report.reboot_required == (0, 1)
    assert report.mode.reboot_required == (0, 1)
    assert "create_gi" not in ops(backend) and "reset" not in ops(backend)
    assert all(v[:2] == (False, True) for v in layout(backend).values())


def test_mode_only_switches_mode_without_devices(tmp_path):
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    eng = engine(backend)
    config = default_configs().configs["all-balanced"]
    report = eng.apply(config, mode_only=True)
    assert report.exit_code == 0
    assert all(v == (True, True, ()) for v in layout(backend).values())
    assert "create_gi" not in ops(backend)
    assert eng.assert_config(config, mode_only=True) == []
    assert eng.assert_config(config) != []


NON_MIG_NODE = "2xA100-SXM4-40GB,1x0x1EB810DE"  # GPU 2: a PCI id with no MIG (T4)


def test_non_mig_gpu_is_skipped_with_devices_all(tmp_path):
    backend = sim_node(tmp_path, NON_MIG_NODE)
    eng = engine(backend)
    report = eng.apply(default_configs().configs["all-balanced"])
    assert report.exit_code == 0
    assert [r.index for r in report.gpus] == [0, 1]
    report = eng.apply(default_configs().configs["all-enabled"])
    assert report.exit_code == 0
    assert layout(backend)[2] == (False, False, ())


def test_non_mig_gpu_named_with_mig_enabled_is_a_usage_error(tmp_path):
    backend = sim_node(tmp_path, NON_MIG_NODE)
    eng = engine(backend)
    cfg = parse_config(
        "version: v1\nmig-configs:\n  bad:\n    - devices: [2]\n      mig-enabled: true\n      mig-devices: {}\n",
        "t.yaml",
    ).configs["bad"]
    before = ops(backend)
    with pytest.raises(UsageError) as err:
        eng.apply(cfg)
    assert "GPU 2" in str(err.value)
    assert ops(backend) == before


class _Recorder:
    def __init__(self):
        self.statuses: list[str] = []
        self.timeouts: list[float] = []

    def status(self, text):
        self.statuses.append(text)

    def extend_timeout(self, seconds):
        self.timeouts.append(seconds)


def test_progress_goes_to_the_notifier(tmp_path):
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    rec = _Recorder()
    engine(backend, notify=rec).apply(default_configs().configs["all-balanced"])
    assert any(s.startswith("GPU 1/2: creating 3g.20gb at slot ") for s in rec.statuses)
    assert any("resetting GPU(s) 0, 1" in s for s in rec.statuses)
    assert rec.timeouts and all(t > 0 for t in rec.timeouts)
    # one extension before each long step at least: 2 sets + 1 reset + 8 creates
    assert len(rec.timeouts) >= 11


def test_phase_callbacks_run_before_the_first_write_of_each_phase(tmp_path):
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    eng = engine(backend)
    seen = []
    eng.apply(
        default_configs().configs["all-balanced"],
        before_mode=lambda plan: seen.append(("mode", plan.mode_change_gpus, dict(ops(backend)))),
        before_geometry=lambda plan: seen.append(("geometry", plan.geometry_change_gpus, dict(ops(backend)))),
    )
    assert seen == [
        ("mode", (0, 1), {}),
        ("geometry", (0, 1), {"set_mode": 2, "reset": 2}),
    ]
    seen.clear()
    eng.apply(default_configs().configs["all-3g.20gb"], before_mode=lambda p: seen.append("mode"),
              before_geometry=lambda p: seen.append("geometry"))
    assert seen == ["geometry"]  # no mode change, so no mode callback
    seen.clear()
    eng.apply(default_configs().configs["all-3g.20gb"], before_mode=lambda p: seen.append("mode"),
              before_geometry=lambda p: seen.append("geometry"))
    assert seen == []  # nothing to do at all


class HookFailed(Exception):
    pass


def test_failing_geometry_callback_rolls_the_mode_change_back(tmp_path):
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    eng = engine(backend)

    def fail(plan):
        raise HookFailed("pre-apply-config hook exited 1")

    with pytest.raises(HookFailed):
        eng.apply(default_configs().configs["all-balanced"], before_geometry=fail)
    assert all(v == (False, False, ()) for v in layout(backend).values())
    assert "create_gi" not in ops(backend)
