"""resolve_config: which entry applies to which GPU, and the errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from vectors import require_vectors

from migmanagerd.catalog.load import load_catalog
from migmanagerd.errors import SpecError
from migmanagerd.planner.node import GpuSlot, admits, fits_model, gpu_slot, missing_indices, resolve_config
from migmanagerd.spec.config import parse_config

CATALOG = load_catalog()
A100 = CATALOG.get("A100-SXM4-40GB")
A100_80 = CATALOG.get("A100-SXM4-80GB")
A100_ID = 0x20B010DE
A100_80_ID = 0x20B210DE
DISPLAY_ID = 0x1FB010DE


def a100(i: int) -> GpuSlot:
    return GpuSlot(i, A100_ID, 0x134F10DE, A100, True)


def config(body: str, name: str = "c"):
    text = "version: v1\nmig-configs:\n  " + name + ":\n" + body
    return parse_config(text, "cfg.yaml").configs[name]


NODE = [a100(i) for i in range(4)]


def test_all_selects_every_gpu():
    targets = resolve_config(config("""\
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.5gb": 7}
"""), NODE)
    assert sorted(targets) == [0, 1, 2, 3]
    t = targets[2]
    assert t.mig_enabled and [(str(p), n) for p, n in t.mig_devices] == [("1g.5gb", 7)]
    assert t.entry.position == 0


def test_explicit_indices_and_unselected_gpus_left_alone():
    targets = resolve_config(config("""\
    - devices: [0, 1]
      mig-enabled: false
    - devices: [3]
      mig-enabled: true
      mig-devices: {"3g.20gb": 2}
"""), NODE)
    assert sorted(targets) == [0, 1, 3]
    assert not targets[0].mig_enabled and targets[0].mig_devices == ()
    assert targets[3].entry.position == 1


def test_device_filter_selects_by_pci_id():
    node = [a100(0), GpuSlot(1, A100_80_ID, None, A100_80, True)]
    targets = resolve_config(config("""\
    - device-filter: ["0x20B210DE"]
      devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
    - device-filter: "0x20B010DE"
      devices: all
      mig-enabled: true
      mig-devices: {"1g.5gb": 7}
"""), node)
    assert targets[1].entry.position == 0 and targets[0].entry.position == 1


def test_subsystem_filter():
    node = [GpuSlot(0, A100_ID, 0x134F10DE, A100, True), GpuSlot(1, A100_ID, 0x999910DE, A100, True)]
    targets = resolve_config(config("""\
    - device-filter: "0x20B010DE:0x134F10DE"
      devices: all
      mig-enabled: false
"""), node)
    assert list(targets) == [0]


def test_indices_the_node_lacks_are_left_out_with_a_warning_naming_them(caplog):
    # nvidia-mig-parted skips them: NVIDIA's example custom-config names GPUs
    # 0-7 and is meant for nodes with fewer
    with caplog.at_level("WARNING", logger="migmanagerd"):
        targets = resolve_config(config("""\
    - devices: [0]
      mig-enabled: false
    - devices: [2, 7, 5]
      mig-enabled: true
      mig-devices: {"1g.5gb": 7}
"""), NODE)
    assert sorted(targets) == [0, 2]
    assert targets[2].entry.position == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith("cfg.yaml:6:7: config 'c' entry 1: devices: GPU indexes 5, 7 not on this node")
    assert "GPUs 0-3" in warnings[0]


def test_an_entry_naming_only_missing_indices_selects_nothing():
    targets = resolve_config(config("""\
    - devices: [4, 5]
      mig-enabled: false
"""), NODE)
    assert targets == {}


def test_missing_indices_is_pure_and_sorted():
    e = config("""\
    - devices: [7, 1, 5]
      mig-enabled: false
""").entries[0]
    assert missing_indices(e, {0, 1}) == (5, 7)
    assert missing_indices(e, range(8)) == ()


def test_gpu_selected_twice_is_an_error():
    with pytest.raises(SpecError, match=r"entry 1: GPU 2 is selected by this entry and by entry 0 \(line 4\)"):
        resolve_config(config("""\
    - devices: all
      mig-enabled: false
    - devices: [2]
      mig-enabled: true
      mig-devices: {}
"""), NODE)


def test_non_mig_gpu_skipped_with_all_but_error_when_named():
    node = [a100(0), GpuSlot(1, DISPLAY_ID, None, None, False)]
    targets = resolve_config(config("""\
    - devices: all
      mig-enabled: true
      mig-devices: {}
"""), node)
    assert list(targets) == [0]
    with pytest.raises(SpecError, match=r"GPU 1 \(PCI id 0x1FB010DE\) is not MIG-capable"):
        resolve_config(config("""\
    - devices: [1]
      mig-enabled: true
      mig-devices: {}
"""), node)
    # disabling MIG on it explicitly is harmless: nothing to do
    assert resolve_config(config("""\
    - devices: [1]
      mig-enabled: false
"""), node) == {}


def test_mig_enabled_on_unknown_model_is_an_error():
    node = [a100(0), GpuSlot(1, 0xABCD10DE, None, None, True)]
    with pytest.raises(SpecError, match=r"GPU 1 \(PCI id 0xABCD10DE\) is a GPU model the MIG catalog does not know"):
        resolve_config(config("""\
    - devices: all
      mig-enabled: true
      mig-devices: {}
"""), node)
    targets = resolve_config(config("""\
    - devices: all
      mig-enabled: false
"""), node)
    assert sorted(targets) == [0, 1]


def test_dgx_station_config_on_its_node():
    path = require_vectors() / "dgx-station-80gb-config.yaml"
    from migmanagerd.spec.config import load_config

    cf = load_config(path)
    node = [GpuSlot(i, A100_80_ID, None, A100_80, True) for i in (0, 1, 2, 4)] + [GpuSlot(3, DISPLAY_ID, None, None, False)]
    targets = resolve_config(cf.configs["balanced-k8s-dgx-station-80"], node)
    assert sorted(targets) == [0, 1, 2, 4]
    assert not targets[0].mig_enabled
    assert [(str(p), n) for p, n in targets[2].mig_devices] == [("2g.20gb", 3), ("1g.10gb", 1)]
    targets = resolve_config(cf.configs["all-balanced-dgx-station-80"], node)
    assert sorted(targets) == [0, 1, 2, 4]


def test_admits_and_fits_model():
    cf = parse_config("""\
version: v1
mig-configs:
  x:
    - device-filter: ["0x20B010DE", "0x233010DE"]
      devices: all
      mig-enabled: true
      mig-devices: {"3g.20gb": 3}
    - devices: all
      mig-enabled: false
""", "x.yaml")
    e0, e1 = cf.configs["x"].entries
    assert admits(e0, A100) and admits(e0, CATALOG.get("H100-80GB")) and not admits(e0, A100_80)
    assert admits(e1, A100_80)
    assert fits_model(e0, A100) == "3g.20gb x3 requested, A100-SXM4-40GB allows at most 2"
    assert "does not exist on H100-80GB" in fits_model(e0, CATALOG.get("H100-80GB"))
    assert fits_model(e1, A100) is None


@dataclass
class _Info:
    index: int
    name: str
    pci_device_id: int
    pci_subsystem_id: int
    memory_mib: int
    mig_capable: bool


def test_gpu_slot_from_backend_info():
    slot = gpu_slot(_Info(3, "NVIDIA H100 80GB HBM3", 0x233010DE, 0x16C110DE, 81559, True), CATALOG)
    assert slot == GpuSlot(3, 0x233010DE, 0x16C110DE, CATALOG.get("H100-80GB"), True)
    assert gpu_slot(_Info(0, "Tesla T4", 0x1EB810DE, 0, 15360, False), CATALOG).model is None
