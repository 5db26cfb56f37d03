"""NVIDIA's shipped nvidia-mig-parted files must keep working unchanged."""

from __future__ import annotations

import pytest
from vectors import VECTORS, require_vectors

from migmanagerd.spec.config import load_config
from migmanagerd.spec.hooks import load_hooks
from migmanagerd.spec.profile import MigProfile
from migmanagerd.spec.types import HOOK_NAMES, DeviceFilter

CONFIGS = ("config-default.yaml", "dgx-station-80gb-config.yaml", "examples-config.yaml")
HOOKS = ("hooks-default.yaml", "hooks-minimal.yaml")


@pytest.fixture(scope="module", autouse=True)
def _vectors_present():
    require_vectors()


def devices(entry) -> list[tuple[str, int]]:
    return [(str(p), n) for p, n in entry.mig_devices]


def test_vector_set_is_complete():
    # guards against a rename silently shrinking what this file checks
    assert sorted(p.name for p in VECTORS.glob("*.yaml")) == sorted(CONFIGS + HOOKS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_vectors_parse_and_keep_every_config(name):
    path = VECTORS / name
    cf = load_config(path)
    # every top-level config name in the file survives, in file order
    names = [line.strip().rstrip(":") for line in path.read_text().splitlines()
             if line.startswith("  ") and not line.startswith("   ") and line.strip().endswith(":")
             and not line.strip().startswith("#")]
    assert list(cf.configs) == names
    for config in cf.configs.values():
        assert config.entries
        for entry in config.entries:
            assert entry.mig_enabled or entry.mig_devices == ()


def test_default_all_balanced_a30_entry():
    cf = load_config(VECTORS / "config-default.yaml")
    entries = cf.configs["all-balanced"].entries
    (a30,) = [e for e in entries if DeviceFilter(0x20B710DE) in e.device_filters]
    assert a30.device_filters == (DeviceFilter(0x20B710DE),)  # written as a plain string, not a list
    assert a30.devices == "all" and a30.mig_enabled
    assert devices(a30) == [("1g.6gb", 2), ("2g.12gb", 1)]
    assert (a30.loc.line, a30.loc.column) == (377, 7)
    assert a30.selects(3, 0x20B710DE, None) and not a30.selects(3, 0x20B010DE, None)


def test_default_all_balanced_h100_80gb_filter_list():
    cf = load_config(VECTORS / "config-default.yaml")
    h100 = [e for e in cf.configs["all-balanced"].entries if DeviceFilter(0x233010DE) in e.device_filters]
    assert len(h100) == 1
    assert len(h100[0].device_filters) == 8
    assert DeviceFilter(0x20B210DE) in h100[0].device_filters
    assert devices(h100[0]) == [("1g.10gb", 2), ("2g.20gb", 1), ("3g.40gb", 1)]


def test_default_attribute_profiles():
    cf = load_config(VECTORS / "config-default.yaml")
    (me,) = cf.configs["all-1g.5gb.me"].entries
    assert me.mig_devices == ((MigProfile.parse("1g.5gb+me"), 1),)
    (gfx,) = cf.configs["all-1g.24gb.gfx"].entries
    assert devices(gfx) == [("1g.24gb+gfx", 4)]
    (all_me,) = cf.configs["all-1g.24gb.me.all"].entries
    assert devices(all_me) == [("1g.24gb+me.all", 1)]


def test_default_all_disabled_and_enabled():
    cf = load_config(VECTORS / "config-default.yaml")
    (off,) = cf.configs["all-disabled"].entries
    assert (off.devices, off.mig_enabled, off.mig_devices, off.device_filters) == ("all", False, (), ())
    (on,) = cf.configs["all-enabled"].entries
    assert (on.devices, on.mig_enabled, on.mig_devices) == ("all", True, ())


def test_examples_custom_config_device_lists():
    cf = load_config(VECTORS / "examples-config.yaml")
    entries = cf.configs["custom-config"].entries
    assert [e.devices for e in entries] == [(0, 1, 2, 3), (4,), (5,), (6,), (7,)]
    assert [e.mig_enabled for e in entries] == [False, True, True, True, True]
    assert devices(entries[1]) == [("1g.5gb", 7)]
    assert devices(entries[4]) == [("1g.5gb", 2), ("2g.10gb", 1), ("3g.20gb", 1)]
    assert [e.position for e in entries] == [0, 1, 2, 3, 4]


def test_dgx_station_disabled_with_empty_mig_devices():
    cf = load_config(VECTORS / "dgx-station-80gb-config.yaml")
    first, second = cf.configs["all-disabled-dgx-station-80"].entries
    assert first.device_filters == (DeviceFilter(0x20B210DE),) and not first.mig_enabled
    assert second.device_filters == (DeviceFilter(0x1FB010DE),) and second.mig_devices == ()
    k8s = cf.configs["balanced-k8s-dgx-station-80"].entries
    assert [e.devices for e in k8s] == [(0,), (1,), (2,), (4,), (3,)]
    assert devices(k8s[2]) == [("2g.20gb", 3), ("1g.10gb", 1)]


def test_hooks_default():
    hf = load_hooks(VECTORS / "hooks-default.yaml")
    assert set(hf.hooks) == set(HOOK_NAMES)
    exit_hooks = hf.get("apply-exit")
    assert len(exit_hooks) == 2
    assert [h.args[-1] for h in exit_hooks] == ["source hooks.sh; apply-exit", "source hooks.sh; refresh-cdi"]
    for hooks in hf.hooks.values():
        for h in hooks:
            assert h.command == "/bin/bash" and h.workdir == "/etc/nvidia-mig-manager"
            assert h.args[:2] == ("-x", "-c") and h.envs == {}
    (start,) = hf.get("apply-start")
    assert start.args[2] == "source hooks.sh; apply-start ${MIG_PARTED_SELECTED_CONFIG}"


def test_hooks_minimal():
    hf = load_hooks(VECTORS / "hooks-minimal.yaml")
    assert list(hf.hooks) == ["apply-start"]
    (start,) = hf.get("apply-start")
    assert start.command == "/bin/bash" and len(start.args) == 3
    assert hf.get("apply-exit") == ()
