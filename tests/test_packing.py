"""Compute instances share a GPU instance the way nvidia-mig-parted packs them
(docs/config-format.md, "Compute instances and GPU instances"): planner,
simulator, apply, assert, export and minimal change."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from apply_helpers import catalog, engine, layout, ops, sim_node
from peer_configs import a100_40gb_configs, enumerate_a100_40gb_configs
from test_planner import layouts_by_multiset

from migmanagerd.apply.configtext import render_config_file
from migmanagerd.apply.export import node_config
from migmanagerd.apply.render import plan_json
from migmanagerd.gpu.backend import BackendError
from migmanagerd.gpu.sim_faults import FAULTS_ENV, PROCESS_FAULTS
from migmanagerd.planner.packing import group, orderings, peer_order, shape_ci_names
from migmanagerd.planner.placement import _resolve_target, check_layout, plan_gpu
from migmanagerd.planner.types import GpuPlan, Infeasible
from migmanagerd.spec.config import parse_config
from migmanagerd.spec.profile import MigProfile

P = MigProfile.parse


def model(name: str):
    return catalog().get(name)


def shapes(model_name: str, target: dict[str, int]) -> list[str] | str:
    result = plan_gpu(model(model_name), [], [(P(n), k) for n, k in target.items()])
    if isinstance(result, Infeasible):
        return result.reason
    return sorted(d.profile for d in result.create)


def config(target: dict[str, int] | tuple[tuple[str, int], ...], name: str = "t"):
    items = target.items() if isinstance(target, dict) else target
    devices = ", ".join(f'"{n}": {c}' for n, c in items)
    text = f"version: v1\nmig-configs:\n  {name}:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {{{devices}}}\n"
    return parse_config(text, "t.yaml").configs[name]


def canonical(target) -> Counter[str]:
    """CI counts by canonical name (the peer writes ``7c.7g.40gb`` for ``7g.40gb``)."""
    items = target.items() if isinstance(target, dict) else target
    out: Counter[str] = Counter()
    for n, k in items:
        out[str(P(str(n)))] += k
    return out


# ---------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    "model_name, target, want",
    [
        ("A100-SXM4-40GB", {"1c.3g.20gb": 2}, ["3g.20gb[cis=1c,1c]"]),
        ("A100-SXM4-40GB", {"1c.7g.40gb": 7}, ["7g.40gb[cis=1c,1c,1c,1c,1c,1c,1c]"]),
        ("A100-SXM4-40GB", {"1c.3g.20gb": 1, "2c.3g.20gb": 1}, ["3g.20gb[cis=2c,1c]"]),
        # a 3g GI holds three 1c CIs; the fourth opens a second GI
        ("A100-SXM4-40GB", {"1c.3g.20gb": 4}, ["1c.3g.20gb", "3g.20gb[cis=1c,1c,1c]"]),
        # the full-GI CI (3c) leaves no room: 1c CIs get their own GI
        ("A100-SXM4-40GB", {"3g.20gb": 1, "1c.3g.20gb": 2}, ["3g.20gb", "3g.20gb[cis=1c,1c]"]),
        # sorted order [2c,2c,1c,1c] needs three 3g GIs; the peer's next
        # ordering [2c,1c,2c,1c] fits in two
        ("A100-SXM4-40GB", {"2c.3g.20gb": 2, "1c.3g.20gb": 2}, ["3g.20gb[cis=2c,1c]", "3g.20gb[cis=2c,1c]"]),
        # different GI profiles never share
        ("A100-SXM4-40GB", {"1c.2g.10gb": 1, "1c.3g.20gb": 1}, ["1c.2g.10gb", "1c.3g.20gb"]),
        ("A100-SXM4-40GB", {"1c.4g.20gb": 2, "2c.4g.20gb": 1, "3g.20gb": 1}, ["3g.20gb", "4g.20gb[cis=2c,1c,1c]"]),
        ("H100-80GB", {"1c.7g.80gb": 7}, ["7g.80gb[cis=1c,1c,1c,1c,1c,1c,1c]"]),
        ("H100-80GB", {"1c.2g.20gb": 6, "1g.10gb": 1}, ["1g.10gb"] + ["2g.20gb[cis=1c,1c]"] * 3),
        ("H100-80GB", {"1c.4g.40gb": 2, "2c.4g.40gb": 1, "1c.3g.40gb": 3}, ["3g.40gb[cis=1c,1c,1c]", "4g.40gb[cis=2c,1c,1c]"]),
        ("H100-80GB", {"3c.7g.80gb": 2, "1c.7g.80gb": 1}, ["7g.80gb[cis=3c,3c,1c]"]),
    ],
)
def test_packing_rule(model_name, target, want):
    assert shapes(model_name, target) == want


@pytest.mark.parametrize(
    "model_name, target, words",
    [
        ("A100-SXM4-40GB", {"1c.3g.20gb": 7}, "3g.20gb x3"),  # 3 + 3 + 1: three 3g GIs
        ("A100-SXM4-40GB", {"2c.3g.20gb": 3}, "3g.20gb x3"),  # one 2c per 3g GI
        ("H100-80GB", {"1c.7g.80gb": 8}, "7g.80gb x2 (1c.7g.80gb x1 + 7g.80gb[cis=1c,1c,1c,1c,1c,1c,1c] x1)"),
        ("H100-80GB", {"4c.7g.80gb": 1, "1c.7g.80gb": 4}, "allows at most 1"),
    ],
)
def test_packing_infeasible(model_name, target, words):
    reason = shapes(model_name, target)
    assert isinstance(reason, str) and words in reason


def test_peer_sort_order_and_ties():
    items = _resolve_target(model("A100-SXM4-40GB"), {P("1c.3g.20gb"): 1, P("7g.40gb"): 1, P("1g.5gb+me"): 1, P("1g.5gb"): 1, P("2c.3g.20gb"): 1})
    assert not isinstance(items, Infeasible)
    # G descending, C descending, "+" attributes descending (+me before none)
    assert [it.name for it in peer_order(items)] == ["7g.40gb", "2c.3g.20gb", "1c.3g.20gb", "1g.5gb+me", "1g.5gb"]
    # 1g.10gb and 1g.5gb tie in the peer's key; the GI name decides, never input order
    a = _resolve_target(model("A100-SXM4-40GB"), [(P("1g.5gb"), 1), (P("1g.10gb"), 1)])
    b = _resolve_target(model("A100-SXM4-40GB"), [(P("1g.10gb"), 1), (P("1g.5gb"), 1)])
    assert [i.name for i in peer_order(a)] == [i.name for i in peer_order(b)] == ["1g.10gb", "1g.5gb"]


def test_orderings_are_the_peers_distinct_permutations():
    """The peer's TestIteratePermutationsUntilSuccess property, on its own inputs."""
    a100 = model("A100-SXM4-40GB")
    small = [t for t in a100_40gb_configs() if sum(k for _, k in t) <= 5]  # at most 5! orderings each
    for target in small[::5]:
        items = _resolve_target(a100, [(P(n), k) for n, k in target])
        assert not isinstance(items, Infeasible)
        distinct = math.factorial(len(items))
        for _, k in target:
            distinct //= math.factorial(k)
        seen = [tuple(i.name for i in o) for o in orderings(peer_order(items))]
        assert len(seen) == len(set(seen)) == distinct
        assert seen[0] == tuple(i.name for i in peer_order(items))


def test_shape_names_round_trip():
    assert shape_ci_names("3g.20gb[cis=2c,1c]") == ["2c.3g.20gb", "1c.3g.20gb"]
    assert shape_ci_names("7g.40gb[cis=7c]") == ["7g.40gb"]
    assert shape_ci_names("1c.3g.20gb") == ["1c.3g.20gb"]
    assert shape_ci_names("3g.20gb[cis=]") == []
    assert shape_ci_names("3g.20gb[cis=x]") is None


# ---------------------------------------------------------------- the peer's own inputs


def test_peer_enumeration_matches_the_stored_list():
    """The stored list is what the peer's test enumeration gives (about 45 s of
    CPU): the other tests read the stored copy, so it must not drift."""
    assert enumerate_a100_40gb_configs() == a100_40gb_configs()


def test_peer_a100_config_inputs_feasibility():
    """Of the 754 configs the peer's config tests apply on A100-SXM4-40GB, 386 fit
    a real A100 its way; every other one fits in no ordering at all."""
    a100 = model("A100-SXM4-40GB")
    configs = a100_40gb_configs()
    assert len(configs) == 754
    legal = layouts_by_multiset(a100)
    feasible = 0
    for target in configs:
        result = plan_gpu(a100, [], [(P(n), k) for n, k in target])
        items = _resolve_target(a100, [(P(n), k) for n, k in target])
        assert not isinstance(items, Infeasible)
        if isinstance(result, GpuPlan):
            feasible += 1
            assert check_layout(a100, result.create) is None
            cis = Counter(n for d in result.create for n in shape_ci_names(d.profile) or ())
            assert cis == canonical(target)
            continue
        # oracle: no ordering groups the CIs into GIs some legal layout holds
        for order in orderings(peer_order(items)):
            gis = frozenset(Counter(g.gi.name for g in group(order)).items())
            assert gis not in legal, (target, [g.shape for g in group(order)])
    assert feasible == 386


# ---------------------------------------------------------------- simulator


def test_simulator_budgets_and_placements_inside_a_gi(tmp_path):
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    backend.set_mig_mode(0, True)
    backend.reset([0])
    a100 = model("A100-SXM4-40GB")
    gi3 = a100.gi_profile("3g.20gb")
    c1, c2 = gi3.ci_profile("1c.3g.20gb"), gi3.ci_profile("2c.3g.20gb")
    gi = backend.create_gpu_instance(0, gi3.nvml_id, 0)
    one = backend.create_compute_instance(0, gi.id, c1.nvml_id)
    assert (one.start, one.size) == (0, 1)
    with pytest.raises(BackendError) as err:  # the 2c CI's only start is taken
        backend.create_compute_instance(0, gi.id, c2.nvml_id)
    assert err.value.code == "INSUFFICIENT_RESOURCES"
    other = backend.create_gpu_instance(0, gi3.nvml_id, 4)
    two = backend.create_compute_instance(0, other.id, c2.nvml_id)
    last = backend.create_compute_instance(0, other.id, c1.nvml_id)
    assert [(two.start, two.size), (last.start, last.size)] == [(0, 2), (2, 1)]
    with pytest.raises(BackendError):  # all three compute slices used
        backend.create_compute_instance(0, other.id, c1.nvml_id)


def test_apply_assert_export_round_trip(tmp_path):
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    eng = engine(backend)
    target = {"1c.3g.20gb": 1, "2c.3g.20gb": 1, "1c.2g.10gb": 2}
    assert eng.apply(config(target)).exit_code == 0
    (gpu,) = eng.observe().gpus
    assert sorted(d.profile for d in gpu.devices) == ["2g.10gb[cis=1c,1c]", "3g.20gb[cis=2c,1c]"]
    packed = next(d for d in gpu.devices if d.profile == "3g.20gb[cis=2c,1c]")
    assert [(c.profile, c.start) for c in packed.cis] == [("2c.3g.20gb", 0), ("1c.3g.20gb", 2)]
    assert eng.assert_config(config(target)) == []
    # export writes CI counts, as the peer does, and they pack back identically
    exported, warnings = node_config(eng.observe())
    assert warnings == []
    (entry,) = exported.entries
    assert dict(entry.mig_devices) == target
    text = render_config_file([exported])
    assert '"1c.2g.10gb": 2' in text or "1c.2g.10gb: 2" in text
    again = parse_config(text, "export.yaml").configs["current"]
    before = layout(backend)
    spent = Counter(ops(backend))
    report = eng.apply(again)
    assert report.exit_code == 0 and not report.changed
    assert layout(backend) == before and Counter(ops(backend)) == spent


@pytest.mark.parametrize("index", range(0, 386, 43))
def test_peer_inputs_apply_on_the_simulator(tmp_path, index):
    a100 = model("A100-SXM4-40GB")
    fitting = [t for t in a100_40gb_configs() if isinstance(plan_gpu(a100, [], [(P(n), k) for n, k in t]), GpuPlan)]
    target = fitting[index]
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    eng = engine(backend)
    assert eng.apply(config(target)).exit_code == 0
    assert eng.assert_config(config(target)) == []
    exported, warnings = node_config(eng.observe())
    assert warnings == [] and canonical(exported.entries[0].mig_devices) == canonical(target)


def test_assert_counts_gi_grouping(tmp_path):
    """Two 1c CIs in two 3g GIs are not what "1c.3g.20gb: 2" packs to."""
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    backend.set_mig_mode(0, True)
    backend.reset([0])
    gi3 = model("A100-SXM4-40GB").gi_profile("3g.20gb")
    for start in (0, 4):
        gi = backend.create_gpu_instance(0, gi3.nvml_id, start)
        backend.create_compute_instance(0, gi.id, gi3.ci_profile("1c.3g.20gb").nvml_id)
    eng = engine(backend)
    assert eng.assert_config(config({"1c.3g.20gb": 2})) == [
        "GPU 0: has 1c.3g.20gb x2, wants 3g.20gb[cis=1c,1c] x1"
    ]
    _, warnings = node_config(eng.observe())
    assert len(warnings) == 1 and "3g.20gb[cis=1c,1c] x1" in warnings[0]
    # apply regroups them: the first GI gets the second CI, the other GI goes
    plan = eng.plan(config({"1c.3g.20gb": 2})).gpu(0).result
    assert isinstance(plan, GpuPlan) and len(plan.kept_uuids) == 1 and len(plan.destroy) == 1
    spent = Counter(ops(backend))
    assert eng.apply(config({"1c.3g.20gb": 2})).exit_code == 0
    assert eng.assert_config(config({"1c.3g.20gb": 2})) == []
    assert Counter(ops(backend)) - spent == Counter(destroy_ci=1, destroy_gi=1, create_ci=1)


# ---------------------------------------------------------------- minimal change


def test_minimal_change_keeps_packed_gis_and_their_uuids(tmp_path):
    backend = sim_node(tmp_path, "1xH100-80GB")
    eng = engine(backend)
    first = {"1c.3g.40gb": 3, "1c.4g.40gb": 2, "2c.4g.40gb": 1}
    assert eng.apply(config(first)).exit_code == 0
    (gpu,) = eng.observe().gpus
    packed3 = next(d for d in gpu.devices if d.profile == "3g.40gb[cis=1c,1c,1c]")
    plan = eng.plan(config({"1c.3g.40gb": 3, "2g.20gb": 1, "1g.10gb": 2}))
    result = plan.gpu(0).result
    assert isinstance(result, GpuPlan)
    assert [d.profile for d in result.keep] == ["3g.40gb[cis=1c,1c,1c]"]
    assert [d.profile for d in result.destroy] == ["4g.40gb[cis=2c,1c,1c]"]
    # plan --json lists the CIs of a packed GI
    keep_json = plan_json(plan)["gpus"][0]["keep"][0]
    assert [c["profile"] for c in keep_json["cis"]] == ["1c.3g.40gb"] * 3
    assert {c["uuid"] for c in keep_json["cis"]} == set(packed3.uuids)
    spent = Counter(ops(backend))
    report = eng.apply(config({"1c.3g.40gb": 3, "2g.20gb": 1, "1g.10gb": 2}))
    assert report.exit_code == 0
    assert set(report.gpus[0].kept_uuids) == set(packed3.uuids) and len(packed3.uuids) == 3
    assert Counter(ops(backend)) - spent == Counter(destroy_ci=3, destroy_gi=1, create_gi=3, create_ci=3)
    (gpu,) = eng.observe().gpus
    still = next(d for d in gpu.devices if d.profile == "3g.40gb[cis=1c,1c,1c]")
    assert still.uuids == packed3.uuids and still.placement == packed3.placement


def test_packed_to_other_packing_and_back(tmp_path):
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    eng = engine(backend)
    a = {"1c.3g.20gb": 3, "2c.3g.20gb": 1}  # [2c,1c] [1c,1c]
    b = {"2c.3g.20gb": 2, "1c.3g.20gb": 2}
    assert eng.apply(config(a)).exit_code == 0
    (gpu,) = eng.observe().gpus
    pair = next(d for d in gpu.devices if d.profile == "3g.20gb[cis=1c,1c]")
    spent = Counter(ops(backend))
    assert eng.apply(config(b)).exit_code == 0
    assert eng.assert_config(config(b)) == []
    # [2c,1c] is kept; [1c,1c] becomes [2c,1c]: one GI and its CIs rebuilt
    assert Counter(ops(backend)) - spent == Counter(destroy_ci=2, destroy_gi=1, create_gi=1, create_ci=2)
    (gpu,) = eng.observe().gpus
    assert pair.uuids[0] not in {u for d in gpu.devices for u in d.uuids}


def test_rollback_restores_a_packed_gi(tmp_path, monkeypatch):
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    eng = engine(backend)
    assert eng.apply(config({"2c.3g.20gb": 1, "1c.3g.20gb": 1, "3g.20gb": 1})).exit_code == 0
    before = [(d.profile, d.placement) for d in eng.observe().gpus[0].devices]
    PROCESS_FAULTS.reset()
    monkeypatch.setenv(FAULTS_ENV, "create_ci:2")  # dies inside the new GI
    try:
        report = eng.apply(config({"1c.7g.40gb": 3}))
    finally:
        monkeypatch.delenv(FAULTS_ENV)
        PROCESS_FAULTS.reset()
    assert report.exit_code == 1 and report.gpus[0].status == "rolled-back"
    assert [(d.profile, d.placement) for d in eng.observe().gpus[0].devices] == before


def test_packed_layouts_over_the_nvml_backend(tmp_path):
    """The NVML backend (nvidia-ml-py over the NVML stand-in) builds, reads back
    and keeps packed GPU instances the same way the simulator does."""
    backend = sim_node(tmp_path, "1xH100-80GB", backend="nvml")
    try:
        eng = engine(backend)
        first = {"1c.3g.40gb": 3, "1c.4g.40gb": 2, "2c.4g.40gb": 1}
        assert eng.apply(config(first)).exit_code == 0
        assert eng.assert_config(config(first)) == []
        (gpu,) = eng.observe().gpus
        assert sorted(d.profile for d in gpu.devices) == ["3g.40gb[cis=1c,1c,1c]", "4g.40gb[cis=2c,1c,1c]"]
        packed3 = next(d for d in gpu.devices if d.profile.startswith("3g"))
        report = eng.apply(config({"1c.3g.40gb": 3, "4g.40gb": 1}))
        assert report.exit_code == 0 and set(report.gpus[0].kept_uuids) == set(packed3.uuids)
        exported, warnings = node_config(eng.observe())
        assert warnings == [] and canonical(exported.entries[0].mig_devices) == canonical({"1c.3g.40gb": 3, "4g.40gb": 1})
        assert backend.lib.calls.count("nvmlGpuInstanceCreateComputeInstance") == 7
    finally:
        backend.close()


@pytest.mark.parametrize(
    "first, second, spent, kept",
    [
        # one CI fewer: only that CI goes, six UUIDs stay
        ({"1c.7g.40gb": 7}, {"1c.7g.40gb": 6}, Counter(destroy_ci=1), 6),
        # one CI more in the same GI
        ({"1c.3g.20gb": 2}, {"1c.3g.20gb": 3}, Counter(create_ci=1), 2),
        # [1c,1c,1c] -> [2c,1c]: the 1c at CI slice 2 stays, the 2c takes slices 0-1
        ({"1c.3g.20gb": 3}, {"2c.3g.20gb": 1, "1c.3g.20gb": 1}, Counter(destroy_ci=2, create_ci=1), 1),
        # [2c,1c] -> [1c,1c,1c]: the 1c stays, the 2c becomes two 1c
        ({"2c.3g.20gb": 1, "1c.3g.20gb": 1}, {"1c.3g.20gb": 3}, Counter(destroy_ci=1, create_ci=2), 1),
    ],
)
def test_compute_instances_change_inside_a_kept_gpu_instance(tmp_path, first, second, spent, kept):
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    eng = engine(backend)
    assert eng.apply(config(first)).exit_code == 0
    before = {u for d in eng.observe().gpus[0].devices for u in d.uuids}
    (gi_before,) = [d.gi_id for d in eng.observe().gpus[0].devices]
    plan = eng.plan(config(second)).gpu(0).result
    assert isinstance(plan, GpuPlan) and len(plan.adjust) == 1 and not plan.create and not plan.destroy
    assert plan_json(eng.plan(config(second)))["gpus"][0]["adjust"][0]["target"] == plan.adjust[0].target.profile
    ops_before = Counter(ops(backend))
    report = eng.apply(config(second))
    assert report.exit_code == 0
    assert Counter(ops(backend)) - ops_before == spent
    assert eng.assert_config(config(second)) == []
    (gpu,) = eng.observe().gpus
    now = {u for d in gpu.devices for u in d.uuids}
    assert len(before & now) == kept == len(report.gpus[0].kept_uuids)
    assert [d.gi_id for d in gpu.devices] == [gi_before]  # the same GPU instance


def test_a_failed_change_inside_a_gpu_instance_is_rolled_back(tmp_path, monkeypatch):
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    eng = engine(backend)
    assert eng.apply(config({"1c.3g.20gb": 3})).exit_code == 0
    before = [(d.profile, d.placement) for d in eng.observe().gpus[0].devices]
    PROCESS_FAULTS.reset()
    monkeypatch.setenv(FAULTS_ENV, "create_ci:1")  # the 2c CI, after two 1c were destroyed
    try:
        report = eng.apply(config({"2c.3g.20gb": 1, "1c.3g.20gb": 1}))
    finally:
        monkeypatch.delenv(FAULTS_ENV)
        PROCESS_FAULTS.reset()
    assert report.exit_code == 1 and report.gpus[0].status == "rolled-back"
    assert [(d.profile, d.placement) for d in eng.observe().gpus[0].devices] == before
