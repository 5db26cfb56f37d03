"""The shipped MIG geometry catalog: self-consistency and lookups."""

from __future__ import annotations

import copy
from importlib import resources

import pytest
import yaml
from vectors import VECTORS, needs_vectors

from migmanagerd.catalog.load import CatalogError, load_catalog, parse_catalog
from migmanagerd.planner.placement import plan_gpu
from migmanagerd.spec.profile import MigProfile

CATALOG = load_catalog()
MODELS = CATALOG.models


def _raw() -> dict:
    text = resources.files("migmanagerd.catalog").joinpath("models.yaml").read_text()
    return yaml.safe_load(text)


def test_required_models_present():
    for name in [
        "A30-24GB", "A100-SXM4-40GB", "A100-SXM4-80GB", "H100-80GB", "H100-NVL-94GB",
        "H100-96GB", "GH200-144GB", "H200-141GB", "B200", "GB200", "B300", "GB300",
        "RTX-PRO-6000-Blackwell",
    ]:
        assert CATALOG.get(name) is not None, name


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_model_geometry_is_consistent(model):
    ids = [p.nvml_id for p in model.gi_profiles]
    assert len(set(ids)) == len(ids)
    assert len({p.name for p in model.gi_profiles}) == len(model.gi_profiles)
    for p in model.gi_profiles:
        assert MigProfile.parse(p.name).gi_name == p.name
        assert MigProfile.parse(p.name).gpu_slices == p.compute_slices
        assert p.compute_slices <= model.compute_slices
        for s in p.placements:
            assert s >= 0 and s + p.memory_slices <= model.memory_slices
        # max count achievable: that many pairwise disjoint placements exist
        chosen, end = 0, -1
        for s in p.placements:
            if s >= end:
                chosen, end = chosen + 1, s + p.memory_slices
        assert chosen >= p.max_count
        assert p.max_count * p.compute_slices <= model.compute_slices
        assert p.full_ci is not None and p.full_ci.name == p.name
        ci_ids = [ci.nvml_id for ci in p.ci_profiles]
        assert len(set(ci_ids)) == len(ci_ids)
        for ci in p.ci_profiles:
            assert ci.compute_slices <= p.compute_slices
            assert ci.max_count * ci.compute_slices <= p.compute_slices
            for s in ci.placements:
                assert s + ci.compute_slices <= p.compute_slices
            assert MigProfile.parse(ci.name).gi_name == p.name


def test_ci_profiles_follow_the_user_guide():
    a100 = CATALOG.get("A100-SXM4-40GB")
    names = lambda gi: {ci.name: ci.nvml_id for ci in a100.gi_profile(gi).ci_profiles}  # noqa: E731
    assert names("3g.20gb") == {"1c.3g.20gb": 0, "2c.3g.20gb": 1, "3g.20gb": 2}
    assert names("4g.20gb") == {"1c.4g.20gb": 0, "2c.4g.20gb": 1, "4g.20gb": 3}  # no 3c.4g
    assert names("7g.40gb") == {"1c.7g.40gb": 0, "2c.7g.40gb": 1, "3c.7g.40gb": 2, "4c.7g.40gb": 3, "7g.40gb": 4}
    assert names("2g.10gb") == {"1c.2g.10gb": 0, "2g.10gb": 1}


def test_a100_40gb_table_matches_user_guide():
    m = CATALOG.get("A100-SXM4-40GB")
    table = {p.name: (p.nvml_id, p.compute_slices, p.memory_slices, p.max_count, p.placements) for p in m.gi_profiles}
    assert table == {
        "1g.5gb": (19, 1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
        "1g.5gb+me": (20, 1, 1, 1, (0, 1, 2, 3, 4, 5, 6)),
        "1g.10gb": (15, 1, 2, 4, (0, 2, 4, 6)),
        "2g.10gb": (14, 2, 2, 3, (0, 2, 4)),
        "3g.20gb": (9, 3, 4, 2, (0, 4)),
        "4g.20gb": (5, 4, 4, 1, (0,)),
        "7g.40gb": (0, 7, 8, 1, (0,)),
    }
    assert (m.compute_slices, m.memory_slices) == (7, 8)
    a30 = CATALOG.get("A30-24GB")
    assert (a30.compute_slices, a30.memory_slices) == (4, 4)


def test_mig_mode_persistence_by_generation():
    for name in ("A100-SXM4-40GB", "A100-SXM4-80GB", "A30-24GB"):
        m = CATALOG.get(name)
        assert m.mig_mode_persistent and m.mig_mode_needs_reset
    for name in ("H100-80GB", "H200-141GB", "B200", "GB200", "RTX-PRO-6000-Blackwell"):
        m = CATALOG.get(name)
        assert not m.mig_mode_persistent and not m.mig_mode_needs_reset


def test_unconfirmed_models_say_what_is_inferred():
    for m in MODELS:
        if any(not p.confirmed for p in m.gi_profiles):
            assert m.notes, m.name
        assert m.sources, m.name


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A100-SXM4-40GB", "A100-SXM4-40GB"),
        ("a100-sxm4-40gb", "A100-SXM4-40GB"),
        ("NVIDIA A100-PCIE-40GB", "A100-SXM4-40GB"),
        ("a100-pcie-40gb", "A100-SXM4-40GB"),
        ("0x20B0", "A100-SXM4-40GB"),
        ("0x20b010de", "A100-SXM4-40GB"),
        ("0x20F6", "A100-SXM4-40GB"),
        ("10de:2330", "H100-80GB"),
        ("NVIDIA H100 80GB HBM3", "H100-80GB"),
        ("h800-80gb", "H100-80GB"),
        ("0x233A10DE", "H100-NVL-94GB"),
        ("A30", "A30-24GB"),
        ("  nvidia   h200 nvl ", "H200-141GB"),
        ("0x290110DE", "B200"),
        ("0x2BB5", "RTX-PRO-6000-Blackwell"),
    ],
)
def test_find(text, expected):
    found = CATALOG.find(text)
    assert found is not None and found.name == expected


@pytest.mark.parametrize("text", ["", "V100", "0x1FB0", "0x20B01234", "0xZZZZ", "A100"])
def test_find_unknown(text):
    assert CATALOG.find(text) is None


def test_for_device_prefers_id_then_name():
    assert CATALOG.for_device(0x20B010DE, "whatever").name == "A100-SXM4-40GB"
    assert CATALOG.for_device(0x2330, "").name == "H100-80GB"
    assert CATALOG.for_device(0x1FB010DE, "NVIDIA DGX Display") is None
    # unknown id, known product name: matched by name
    assert CATALOG.for_device(0xFFFF10DE, "NVIDIA A30").name == "A30-24GB"
    # wrong vendor never matches by id
    assert CATALOG.for_device(0x20B01234, "") is None


def test_for_device_breaks_shared_id_ties():
    data = _raw()
    a = next(m for m in data["models"] if m["name"] == "A30-24GB")
    twin = copy.deepcopy(a)
    twin.update(name="A30-TWIN", product_names=["NVIDIA A30 Twin"], aliases=[], memory_mib=30000)
    data["models"].append(twin)
    cat = parse_catalog(data)
    assert cat.for_device(0x20B710DE, "NVIDIA A30 Twin").name == "A30-TWIN"
    assert cat.for_device(0x20B710DE, "NVIDIA A30").name == "A30-24GB"
    assert cat.for_device(0x20B710DE, "?", memory_mib=29000).name == "A30-TWIN"
    assert cat.for_device(0x20B710DE, "?").name == "A30-24GB"


def _mutate(fn) -> dict:
    data = _raw()
    fn(data)
    return data


def _a100(data):
    return next(m for m in data["models"] if m["name"] == "A100-SXM4-40GB")


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda d: _a100(d)["profiles"][6].update(starts=[1]), "exceeds 8 memory slices"),
        (lambda d: _a100(d)["profiles"][4].update(starts=[0, 2]), "cannot be reached"),
        (lambda d: _a100(d)["profiles"][0].update(max=8), "cannot be reached"),
        (lambda d: _a100(d)["profiles"][1].update(id=19), "not unique"),
        (lambda d: _a100(d)["profiles"][0].update(name="2g.5gb"), "name says 2g"),
        (lambda d: _a100(d)["profiles"][0].update(name="1g.5gb+me"), "attributes"),
        (lambda d: _a100(d)["profiles"][0].update(shape="9g"), "unknown shape"),
        (lambda d: _a100(d).update(aliases=["H100"]), "used by both"),
        (lambda d: _a100(d).update(generation="kepler"), "unknown generation"),
        (lambda d: _a100(d)["profiles"][0].update(memory_mib=10**6), "outside"),
        (lambda d: d.update(version=2), "unsupported version"),
    ],
)
def test_inconsistent_catalog_fails_loudly(mutation, message):
    with pytest.raises(CatalogError, match=message):
        parse_catalog(_mutate(mutation))


def _config_default_entries():
    doc = yaml.safe_load((VECTORS / "config-default.yaml").read_text())
    for name, entries in doc["mig-configs"].items():
        for i, e in enumerate(entries):
            if e.get("mig-enabled") and e.get("mig-devices"):
                filt = e.get("device-filter")
                filt = [filt] if isinstance(filt, str) else (filt or [])
                yield name, i, [int(f, 16) for f in filt], e["mig-devices"]


@needs_vectors
def test_every_config_default_profile_is_in_an_admitted_model():
    checked = 0
    for name, i, filters, devices in _config_default_entries():
        admitted = [m for m in MODELS if not filters or set(m.pci_ids) & set(filters)]
        assert admitted, f"{name} entry {i}: no catalog model has ids {filters}"
        for prof in devices:
            gi = MigProfile.parse(prof).gi_name
            assert any(m.gi_profile(gi) for m in admitted), f"{name} entry {i}: {prof}"
            checked += 1
    assert checked > 60


def test_gb200_pre_production_names_are_former_names_of_its_profiles():
    """mig-parted's 3g.95gb/4g.95gb/7g.189gb were GB200's pre-production names
    (renamed in its PR #228, ids unchanged): no "GB200-189GB" SKU carries them."""
    gb200 = CATALOG.get("GB200")
    assert CATALOG.get("GB200-189GB") is None
    for old, now in (("1g.24gb", "1g.23gb"), ("3g.95gb", "3g.93gb"), ("4g.95gb", "4g.93gb"), ("7g.189gb", "7g.186gb")):
        assert gb200.gi_profile(old) is gb200.gi_profile(now), old
        if old != "1g.24gb":  # a real name on other models
            assert [m.name for m in MODELS if m.gi_profile(old)] == ["GB200"], old
    plan = plan_gpu(gb200, [], [(MigProfile.parse("3g.95gb"), 2)])
    assert [d.profile for d in plan.create] == ["3g.93gb", "3g.93gb"]


def test_rtx_pro_6000_editions_and_a100_pcie_ids():
    for pci in (0x2BB5, 0x2BB1, 0x2BB4):
        assert CATALOG.for_device((pci << 16) | 0x10DE, "").name == "RTX-PRO-6000-Blackwell", hex(pci)
    for pci in (0x20B1, 0x20F6):
        assert CATALOG.for_device((pci << 16) | 0x10DE, "").name == "A100-SXM4-40GB", hex(pci)
    model = CATALOG.find("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition")
    assert model is not None and model.name == "RTX-PRO-6000-Blackwell"
