"""Allowed geometries (HAMi's format, the catalog's) and the pure request selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from migmanagerd.catalog.load import load_catalog
from migmanagerd.catalog.model import Placement
from migmanagerd.errors import SpecError
from migmanagerd.ondemand.geometries import AllowedGeometries, catalog_geometries, load_geometries
from migmanagerd.ondemand.request import BINPACK, SPREAD, DeviceState, GpuState, Refusal, Request, Selection, select
from migmanagerd.planner.placement import check_layout
from migmanagerd.planner.types import MigDevice

HAMI_A100 = """\
nvidia:
  resourceCountName: nvidia.com/gpu
  knownMigGeometries:
  - models: [ "A30" ]
    allowedGeometries:
      -
        - name: 1g.6gb
          memory: 6144
          count: 4
  - models: [ "A100-SXM4-40GB", "A100-40GB-PCIe", "A100-PCIE-40GB", "A100-SXM4-40GB" ]
    allowedGeometries:
      -
        - name: 1g.5gb
          memory: 5120
          count: 7
      -
        - name: 2g.10gb
          memory: 10240
          count: 3
        - name: 1g.5gb
          memory: 5120
          count: 1
      -
        - name: 3g.20gb
          memory: 20480
          count: 2
      -
        - name: 7g.40gb
          memory: 40960
          count: 1
"""

PCIE = "NVIDIA A100-PCIE-40GB"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def a100(catalog):
    return catalog.get("A100-SXM4-40GB")


@pytest.fixture
def hami(tmp_path: Path, catalog) -> AllowedGeometries:
    path = tmp_path / "device-config.yaml"
    path.write_text(HAMI_A100)
    return load_geometries(path, catalog)


def dev(profile: str, start: int, size: int, uuid: str, *, busy: bool = False, lease: str | None = None) -> DeviceState:
    return DeviceState(MigDevice(Placement(start, size), profile, uuid, gi_id=start), busy, lease)


def gpu(index: int, model, *devices: DeviceState, name: str = PCIE) -> GpuState:
    return GpuState(index, name, model, True, tuple(devices))


def layout_after(state: GpuState, sel: Selection) -> list[MigDevice]:
    change = next(c for c in sel.changes if c.gpu == state.index)
    return [*change.plan.keep, *change.plan.create]


# ----------------------------------------------------------------- geometries


def test_hami_file_is_read_unchanged(hami: AllowedGeometries, a100) -> None:
    geoms = hami.for_gpu(PCIE, a100)
    assert [g.describe() for g in geoms] == [
        "1g.5gb x7", "2g.10gb x3 + 1g.5gb x1", "3g.20gb x2", "7g.40gb x1",
    ]
    assert hami.memory_mib(PCIE, a100, "2g.10gb") == 10240  # the file's memory, not the catalog's


def test_hami_model_match_is_by_nvml_name_substring(hami: AllowedGeometries, catalog) -> None:
    a30 = catalog.get("A30-24GB")
    assert [g.describe() for g in hami.for_gpu("NVIDIA A30", a30)] == ["1g.6gb x4"]
    # a model no entry names gets the catalog's maximal layouts
    h100 = catalog.get("H100-80GB")
    assert hami.for_gpu("NVIDIA H100 80GB HBM3", h100) == catalog_geometries(h100)


def test_geometry_that_does_not_fit_is_an_error_with_its_line(tmp_path: Path, catalog) -> None:
    bad = HAMI_A100.replace("count: 2\n", "count: 3\n")  # 3g.20gb x3 on a 7-slice GPU
    path = tmp_path / "device-config.yaml"
    path.write_text(bad)
    with pytest.raises(SpecError) as err:
        load_geometries(path, catalog)
    line = bad.splitlines().index("        - name: 3g.20gb") + 1
    assert str(err.value).startswith(f"{path}:{line}:")
    assert "3g.20gb x3" in str(err.value) and "A100-SXM4-40GB" in str(err.value)
    assert err.value.exit_code == 2


def test_unknown_profile_and_bad_count_are_errors(tmp_path: Path, catalog) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(HAMI_A100.replace("name: 7g.40gb", "name: 7g.41gb"))
    with pytest.raises(SpecError, match="7g.41gb"):
        load_geometries(path, catalog)
    path.write_text(HAMI_A100.replace("count: 7", "count: 0"))
    with pytest.raises(SpecError, match="at least 1"):
        load_geometries(path, catalog)


def test_catalog_geometries_are_maximal_legal_and_ordered(a100) -> None:
    geoms = catalog_geometries(a100)
    assert geoms[0].describe() == "1g.5gb x7"
    assert geoms[-1].describe() == "7g.40gb x1"
    counts = [sum(i.count for i in g.items) for g in geoms]
    assert counts == sorted(counts, reverse=True)
    for g in geoms:
        devices = []
        from migmanagerd.planner.placement import plan_gpu

        plan = plan_gpu(a100, (), g.target)
        devices = list(plan.create)  # type: ignore[union-attr]
        assert check_layout(a100, devices) is None
        assert len({g2.describe() for g2 in geoms}) == len(geoms)


# ----------------------------------------------------------------- selection


def test_hami_example_two_8000_on_empty_a100(hami: AllowedGeometries, a100) -> None:
    g0 = gpu(0, a100)
    sel = select([g0], hami, Request(2, 8000))
    assert isinstance(sel, Selection)
    assert [c.geometry.describe() for c in sel.changes] == ["2g.10gb x3 + 1g.5gb x1"]
    assert [h.profile for h in sel.handouts] == ["2g.10gb", "2g.10gb"]
    assert sorted(d.profile for d in layout_after(g0, sel)) == ["1g.5gb", "2g.10gb", "2g.10gb", "2g.10gb"]


def test_free_instances_are_reused_smallest_first_before_any_change(hami, a100) -> None:
    g0 = gpu(0, a100, dev("3g.20gb", 0, 4, "MIG-big"), dev("2g.10gb", 4, 2, "MIG-mid"), dev("1g.5gb", 6, 1, "MIG-small"))
    sel = select([g0], hami, Request(1, 4000))
    assert isinstance(sel, Selection) and not sel.changes
    assert [h.uuid for h in sel.handouts] == ["MIG-small"]
    sel = select([g0], hami, Request(2, 8000))
    assert isinstance(sel, Selection) and not sel.changes
    assert [h.uuid for h in sel.handouts] == ["MIG-mid", "MIG-big"]


def test_busy_and_leased_instances_never_move(hami, a100) -> None:
    busy = dev("1g.5gb", 6, 1, "MIG-busy", busy=True)
    leased = dev("1g.5gb", 5, 1, "MIG-leased", lease="job1")
    g0 = gpu(0, a100, dev("3g.20gb", 0, 4, "MIG-free"), leased, busy)
    sel = select([g0], hami, Request(1, 16000))
    # the free 3g.20gb fits: no change at all
    assert isinstance(sel, Selection) and [h.uuid for h in sel.handouts] == ["MIG-free"] and not sel.changes
    sel = select([g0], hami, Request(2, 16000))
    # a second 3g.20gb would need slots 4-7, where the pinned ones are: refused
    assert isinstance(sel, Refusal)
    assert "GPU 0" in sel.reason and "busy, leased and shared" in sel.reason


def test_change_keeps_pinned_devices_with_placement_and_uuid(a100) -> None:
    allowed = AllowedGeometries("catalog")
    busy = dev("1g.5gb", 6, 1, "MIG-busy", busy=True)
    g0 = gpu(0, a100, dev("1g.5gb", 0, 1, "MIG-a"), busy)
    sel = select([g0], allowed, Request(1, 9000))
    assert isinstance(sel, Selection) and len(sel.changes) == 1
    plan = sel.changes[0].plan
    assert busy.device in plan.keep
    assert busy.device not in plan.destroy
    assert all(d.uuid != "MIG-busy" for d in plan.destroy)
    assert check_layout(a100, [*plan.keep, *plan.create]) is None


def test_binpack_and_spread_choose_different_gpus(hami, a100) -> None:
    g0 = gpu(0, a100)
    g1 = gpu(1, a100, dev("1g.5gb", 6, 1, "MIG-busy", busy=True))
    packed = select([g0, g1], hami, Request(1, 8000, policy=BINPACK))
    spread = select([g0, g1], hami, Request(1, 8000, policy=SPREAD))
    assert isinstance(packed, Selection) and isinstance(spread, Selection)
    assert [c.gpu for c in packed.changes] == [1]
    assert [c.gpu for c in spread.changes] == [0]


def test_request_spanning_two_gpus_changes_each_once(hami, a100) -> None:
    sel = select([gpu(0, a100), gpu(1, a100)], hami, Request(4, 16000))
    assert isinstance(sel, Selection)
    assert sorted(c.gpu for c in sel.changes) == [0, 1]
    assert [h.profile for h in sel.handouts] == ["3g.20gb"] * 4


def test_refusal_names_the_reason(hami, a100) -> None:
    sel = select([gpu(0, a100)], hami, Request(1, 50000))
    assert isinstance(sel, Refusal) and "no allowed geometry has a fitting instance" in sel.reason
    off = GpuState(0, PCIE, a100, False)
    sel = select([off], hami, Request(1, 1000))
    assert isinstance(sel, Refusal) and "MIG mode is disabled" in sel.reason


def test_profile_request(hami, a100) -> None:
    sel = select([gpu(0, a100)], hami, Request(2, None, profile="3g.20gb"))
    assert isinstance(sel, Selection) and [h.profile for h in sel.handouts] == ["3g.20gb", "3g.20gb"]


def test_a_gpu_instance_shared_by_compute_instances_is_never_destroyed(hami, a100) -> None:
    # 3g.20gb with two 1c compute instances: not one MIG device, never handed out nor destroyed
    shared = DeviceState(MigDevice(Placement(0, 4), "3g.20gb[cis=1c,1c]", None, gi_id=1))
    g0 = gpu(0, a100, shared)
    sel = select([g0], hami, Request(1, 16000))
    assert isinstance(sel, Refusal) and "shared" in sel.reason
    # the planner cannot keep such an instance in place, so that GPU is left alone; another serves
    sel = select([g0, gpu(1, a100)], AllowedGeometries("catalog"), Request(1, 4000))
    assert isinstance(sel, Selection) and [c.gpu for c in sel.changes] == [1]
