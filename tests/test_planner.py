"""Placement planner: feasibility, minimal change, determinism, reasons.

The oracle is an exhaustive enumeration, written here independently of the
planner: every set of non-overlapping legal GPU-instance placements of a
model, filtered by the rules (max counts, compute budget, exclusive groups).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from functools import cache

import pytest

from migmanagerd.catalog.load import load_catalog
from migmanagerd.catalog.model import CiProfile, GiProfile, GpuModel, Placement
from migmanagerd.planner.placement import check_gi_layout, check_layout, plan_gpu
from migmanagerd.planner.types import GpuPlan, Infeasible, MigDevice
from migmanagerd.spec.profile import MigProfile

CATALOG = load_catalog()
MODELS = CATALOG.models
A100 = CATALOG.get("A100-SXM4-40GB")

Layout = frozenset  # of (gi name, start)


def P(text: str) -> MigProfile:
    return MigProfile.parse(text)


def dev(profile: str, start: int, size: int, uuid: str | None = None) -> MigDevice:
    return MigDevice(Placement(start, size), profile, uuid=uuid)


def _rules_hold(model: GpuModel, layout) -> bool:
    counts = Counter(name for name, _ in layout)
    for name, n in counts.items():
        if n > model.gi_profile(name).max_count:
            return False
    if sum(model.gi_profile(n).compute_slices for n, _ in layout) > model.compute_slices:
        return False
    return all(sum(1 for g in group if counts[g]) <= 1 for group in model.exclusive_groups)


@cache
def all_layouts(model: GpuModel) -> tuple[Layout, ...]:
    """Every legal layout: walk the memory slices, each either empty or the start of a GI."""
    out: list[Layout] = []

    def walk(slot: int, acc: tuple) -> None:
        if slot >= model.memory_slices:
            if _rules_hold(model, acc):
                out.append(frozenset(acc))
            return
        walk(slot + 1, acc)
        for p in model.gi_profiles:
            if slot in p.placements and slot + p.memory_slices <= model.memory_slices:
                walk(slot + p.memory_slices, acc + ((p.name, slot),))

    walk(0, ())
    return tuple(out)


@cache
def layouts_by_multiset(model: GpuModel) -> dict[frozenset, list[Layout]]:
    table: dict[frozenset, list[Layout]] = {}
    for lay in all_layouts(model):
        key = frozenset(Counter(n for n, _ in lay).items())
        table.setdefault(key, []).append(lay)
    return table


def _as_devices(model: GpuModel, layout) -> list[MigDevice]:
    return [dev(n, s, model.gi_profile(n).memory_slices) for n, s in sorted(layout, key=lambda x: x[1])]


# ---------------------------------------------------------------- from empty


def _multisets(model: GpuModel):
    """Every multiset bounded by max counts whose memory demand is at most two
    slices over the GPU's (all feasible ones and every near miss), plus a seeded
    sample of the far-over-budget rest (the RTX PRO table alone has 10^5)."""
    profiles = model.gi_profiles
    rng = random.Random(f"multisets-{model.name}")
    for counts in itertools.product(*(range(p.max_count + 1) for p in profiles)):
        memory = sum(p.memory_slices * k for p, k in zip(profiles, counts, strict=True))
        if memory <= model.memory_slices + 2 or rng.random() < 0.01:
            yield counts


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_every_multiset_from_empty_is_valid_or_truly_infeasible(model):
    feasible = layouts_by_multiset(model)
    profiles = model.gi_profiles
    n_feasible = 0
    for counts in _multisets(model):
        target = [(P(p.name), k) for p, k in zip(profiles, counts, strict=True) if k]
        key = frozenset((p.name, k) for p, k in zip(profiles, counts, strict=True) if k)
        result = plan_gpu(model, [], target)
        if isinstance(result, Infeasible):
            assert key not in feasible, f"{model.name}: planner says {result.reason!r} for {target}"
            assert model.name in result.reason
            continue
        n_feasible += 1
        assert key in feasible
        assert result.keep == () and result.destroy == ()
        assert check_layout(model, result.create) is None
        assert Counter(d.profile for d in result.create) == Counter({p.name: k for p, k in zip(profiles, counts, strict=True) if k})
    assert n_feasible == len(feasible)  # every feasible multiset was found feasible


# ---------------------------------------------------------------- minimal change


def _brute_keep(model: GpuModel, current: list[MigDevice], target: Counter) -> int | None:
    key = frozenset(target.items())
    layouts = layouts_by_multiset(model).get(key)
    if layouts is None:
        return None
    have = {(d.profile, d.placement.start) for d in current
            if model.gi_profile(d.profile) is not None
            and d.placement.size == model.gi_profile(d.profile).memory_slices
            and d.placement.start in model.gi_profile(d.profile).placements}
    return max(len(have & lay) for lay in layouts)


def _random_cases(model: GpuModel, rng: random.Random, n: int):
    layouts = all_layouts(model)
    multisets = list(layouts_by_multiset(model))
    for _ in range(n):
        current = _as_devices(model, rng.choice(layouts))
        if rng.random() < 0.2:  # junk the planner must never keep
            current.append(dev(f"{model.gi_profiles[-1].name}[cis=1c,1c]", 0, 1))
        rng.shuffle(current)
        if rng.random() < 0.8:
            target = Counter(dict(rng.choice(multisets)))
        else:
            target = Counter({p.name: rng.randint(0, p.max_count) for p in rng.sample(model.gi_profiles, 3)})
            target = +target
        yield current, target


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_plan_keeps_the_maximum_number_of_devices(model):
    rng = random.Random(f"keep-{model.name}")
    for current, target in _random_cases(model, rng, 150):
        result = plan_gpu(model, current, [(P(n), k) for n, k in sorted(target.items())])
        best = _brute_keep(model, current, target)
        if best is None:
            assert isinstance(result, Infeasible)
            continue
        assert isinstance(result, GpuPlan), result
        assert len(result.keep) == best, (current, target)
        final = list(result.keep) + list(result.create)
        assert check_layout(model, final) is None
        assert Counter(d.profile for d in final) == target
        # keep + destroy partition the current devices
        assert sorted(result.keep + result.destroy) == sorted(current)
        assert all(d.uuid is None for d in result.create)


def test_plan_for_matching_node_is_noop():
    current = [dev("3g.20gb", 4, 4, "MIG-a"), dev("2g.10gb", 0, 2, "MIG-b"), dev("1g.5gb", 2, 1, "MIG-c"), dev("1g.5gb", 3, 1, "MIG-d")]
    plan = plan_gpu(A100, current, {P("1g.5gb"): 2, P("2g.10gb"): 1, P("3g.20gb"): 1})
    assert isinstance(plan, GpuPlan) and plan.is_noop
    assert {d.uuid for d in plan.keep} == {"MIG-a", "MIG-b", "MIG-c", "MIG-d"}


def test_plan_reuses_what_it_can_and_recreates_the_rest():
    # balanced needs 3g@4, so only a 2g in slots 0-3 can stay: the lowest one
    current = [dev("2g.10gb", 4, 2, "MIG-c"), dev("2g.10gb", 2, 2, "MIG-b"), dev("2g.10gb", 0, 2, "MIG-a")]
    plan = plan_gpu(A100, current, {P("1g.5gb"): 2, P("2g.10gb"): 1, P("3g.20gb"): 1})
    assert isinstance(plan, GpuPlan)
    assert [d.uuid for d in plan.keep] == ["MIG-a"]
    assert [d.uuid for d in plan.destroy] == ["MIG-b", "MIG-c"]
    assert [(d.profile, d.placement.start) for d in plan.create] == [("1g.5gb", 2), ("1g.5gb", 3), ("3g.20gb", 4)]
    # a whole-GPU instance blocks everything: destroy it, create all
    plan = plan_gpu(A100, [dev("7g.40gb", 0, 8, "MIG-7g")], {P("3g.20gb"): 2})
    assert plan.keep == () and [d.uuid for d in plan.destroy] == ["MIG-7g"]
    assert [d.placement for d in plan.create] == [Placement(0, 4), Placement(4, 4)]


def test_compute_instance_variants_are_distinct_devices():
    current = [dev("1c.3g.20gb", 0, 4, "MIG-x"), dev("3g.20gb", 4, 4, "MIG-y")]
    plan = plan_gpu(A100, current, {P("1c.3g.20gb"): 1, P("3g.20gb"): 1})
    assert isinstance(plan, GpuPlan) and plan.is_noop
    swapped = plan_gpu(A100, current, {P("3g.20gb"): 2})
    assert [d.uuid for d in swapped.keep] == ["MIG-y"]
    assert [d.uuid for d in swapped.destroy] == ["MIG-x"]
    assert [(d.profile, d.placement) for d in swapped.create] == [("3g.20gb", Placement(0, 4))]
    # 2c and 1c share one 3g.20gb GPU instance (nvidia-mig-parted's packing)
    both = plan_gpu(A100, [], {P("1c.3g.20gb"): 1, P("2c.3g.20gb"): 1, P("3g.20gb"): 1})
    assert isinstance(both, GpuPlan)
    assert sorted(d.profile for d in both.create) == ["3g.20gb", "3g.20gb[cis=2c,1c]"]
    three = plan_gpu(A100, [], {P("1c.3g.20gb"): 2, P("2c.3g.20gb"): 1, P("3g.20gb"): 1})
    assert isinstance(three, Infeasible) and "3g.20gb x3 (" in three.reason and "at most 2" in three.reason


def test_existing_devices_in_other_shapes_are_never_kept():
    current = [
        dev("3g.20gb[cis=1c,1c]", 0, 4, "gi-only"),  # several CIs in one GI
        dev("3g.20gb", 1, 4, "bad-place"),  # illegal start
        dev("3g.20gb", 4, 3, "bad-size"),
        dev("9g.20gb", 0, 8, "unknown"),
    ]
    plan = plan_gpu(A100, current, {P("3g.20gb"): 2})
    assert isinstance(plan, GpuPlan)
    assert plan.keep == ()
    assert len(plan.destroy) == 4 and len(plan.create) == 2


def test_duplicate_existing_devices_keep_only_one():
    current = [dev("1g.5gb", 0, 1, "MIG-1"), dev("1g.5gb", 0, 1, "MIG-2")]
    plan = plan_gpu(A100, current, {P("1g.5gb"): 1})
    assert [d.uuid for d in plan.keep] == ["MIG-1"] and [d.uuid for d in plan.destroy] == ["MIG-2"]


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("model", [A100, CATALOG.get("A30-24GB"), CATALOG.get("RTX-PRO-6000-Blackwell")], ids=lambda m: m.name)
def test_plan_is_deterministic_and_order_independent(model):
    rng = random.Random(f"det-{model.name}")
    for current, target in _random_cases(model, rng, 60):
        tgt = [(P(n), k) for n, k in target.items()]
        first = plan_gpu(model, current, tgt)
        assert plan_gpu(model, current, tgt) == first
        shuffled = list(current)
        rng.shuffle(shuffled)
        rev = list(reversed(tgt))
        assert plan_gpu(model, shuffled, rev) == first
        assert plan_gpu(model, shuffled, dict(rev)) == first


def test_equal_plans_prefer_lowest_placements():
    plan = plan_gpu(A100, [], {P("1g.5gb"): 1})
    assert plan.create == (MigDevice(Placement(0, 1), "1g.5gb"),)
    plan = plan_gpu(A100, [], {P("2g.10gb"): 2, P("3g.20gb"): 1})
    assert [(d.profile, d.placement.start) for d in plan.create] == [("2g.10gb", 0), ("2g.10gb", 2), ("3g.20gb", 4)]


# ---------------------------------------------------------------- reasons


@pytest.mark.parametrize(
    "target, words",
    [
        ({"3g.20gb": 3}, ["3g.20gb x3 requested", "A100-SXM4-40GB allows at most 2"]),
        ({"3g.20gb": 2, "1g.5gb": 1}, ["needs 9 of 8 memory slices", "A100-SXM4-40GB"]),
        ({"4g.20gb": 1, "2g.10gb": 2}, ["needs 8 of 7 compute slices", "A100-SXM4-40GB"]),
        ({"1g.6gb": 1}, ["profile 1g.6gb does not exist on A100-SXM4-40GB", "it has: 1g.5gb"]),
        ({"3c.4g.20gb": 1}, ["compute instance 3c.4g.20gb does not exist in a 4g.20gb", "2c.4g.20gb"]),
        # packed as nvidia-mig-parted does: [3g] [1c,1c,1c] [1c] are three 3g GIs
        ({"1c.3g.20gb": 4, "3g.20gb": 1}, ["3g.20gb x3 (", "3g.20gb[cis=1c,1c,1c] x1", "at most 2"]),
    ],
)
def test_infeasible_reasons_name_model_and_resource(target, words):
    result = plan_gpu(A100, [], [(P(k), v) for k, v in target.items()])
    assert isinstance(result, Infeasible)
    for w in words:
        assert w in result.reason


def test_exclusive_profiles_reason():
    rtx = CATALOG.get("RTX-PRO-6000-Blackwell")
    bad = plan_gpu(rtx, [], {P("1g.24gb+me.all"): 1, P("1g.24gb"): 1})
    assert isinstance(bad, Infeasible) and "cannot be used together" in bad.reason
    ok = plan_gpu(rtx, [], {P("1g.24gb+me.all"): 1, P("1g.24gb-me"): 3})
    assert isinstance(ok, GpuPlan) and check_layout(rtx, ok.create) is None


def _toy_model() -> GpuModel:
    """4 memory slices; a 2-slice profile that may only sit in the middle."""
    ci = lambda n, c: (CiProfile(n, 0, c, 1, (0,)),)  # noqa: E731
    mid = GiProfile("2g.2gb", 14, 1, 2, 2, 2048, 1, (1,), ci_profiles=ci("2g.2gb", 2))
    one = GiProfile("1g.1gb", 19, 0, 1, 1, 1024, 2, (0, 1), ci_profiles=ci("1g.1gb", 1))
    return GpuModel("TOY", (), (), 4, 4, 4096, (mid, one))


def test_fragmentation_reason():
    toy = _toy_model()
    result = plan_gpu(toy, [], {P("2g.2gb"): 1, P("1g.1gb"): 2})
    assert isinstance(result, Infeasible)
    assert "fits the slice budgets of TOY but no placement arrangement" in result.reason
    assert "2g.2gb at 1 (size 2)" in result.reason
    assert isinstance(plan_gpu(toy, [], {P("2g.2gb"): 1, P("1g.1gb"): 1}), GpuPlan)


def test_bad_target_values():
    assert "negative" in plan_gpu(A100, [], [(P("1g.5gb"), -1)]).reason
    assert "not a MIG profile name" in plan_gpu(A100, [], [("junk", 1)]).reason
    assert plan_gpu(A100, [], {}) == GpuPlan((), (), ())
    assert plan_gpu(A100, [], [(P("1g.5gb"), 0)]) == GpuPlan((), (), ())
    # the same profile twice in a sequence adds up
    assert isinstance(plan_gpu(A100, [], [(P("3g.20gb"), 1), (P("3g.20gb"), 2)]), Infeasible)


# ---------------------------------------------------------------- check_layout


@pytest.mark.parametrize(
    "devices, words",
    [
        ([dev("3g.20gb", 0, 4), dev("4g.20gb", 0, 4)], "overlaps 3g.20gb at 0:4"),
        ([dev("3g.20gb", 2, 4)], "not a legal placement"),
        ([dev("1g.5gb", 7, 1)], "not a legal placement"),
        ([dev("1g.5gb+me", 0, 1), dev("1g.5gb+me", 1, 1)], "allows at most 1"),
        ([dev("4g.20gb", 0, 4), dev("2g.10gb", 4, 2), dev("2g.10gb", 6, 2)], "legal placement"),
        ([dev("4g.20gb", 0, 4), dev("1g.10gb", 4, 2), dev("2g.10gb", 4, 2)], "overlaps"),
        ([dev("1g.24gb", 0, 1)], "does not exist on A100-SXM4-40GB"),
        ([dev("3c.4g.20gb", 0, 4)], "compute instance 3c.4g.20gb does not exist"),
        ([dev("3g.20gb[cis=2c,2c]", 0, 4)], "cannot hold these compute instances"),
        ([dev("3g.20gb[cis=]", 0, 4)], "without compute instances"),
    ],
)
def test_check_layout_rejects(devices, words):
    reason = check_layout(A100, devices)
    assert reason is not None and words in reason


def test_check_layout_compute_budget():
    # On the real 7-slice tables legal placements cannot exceed the compute budget,
    # so use a model with fewer compute than memory slices.
    toy = _toy_model()
    narrow = GpuModel("NARROW", (), (), 2, 4, 4096, toy.gi_profiles)
    reason = check_gi_layout(narrow, [("2g.2gb", Placement(1, 2)), ("1g.1gb", Placement(0, 1))])
    assert reason == "needs 3 of 2 compute slices on NARROW"
    assert check_gi_layout(toy, [("2g.2gb", Placement(1, 2)), ("1g.1gb", Placement(0, 1))]) is None


def test_check_layout_accepts_every_enumerated_layout():
    for lay in all_layouts(A100):
        assert check_layout(A100, _as_devices(A100, lay)) is None


def _variant_cases(model: GpuModel, rng: random.Random, n: int):
    """Random layouts and targets whose devices use any CI profile of their GI."""
    layouts = all_layouts(model)
    multisets = list(layouts_by_multiset(model))
    for _ in range(n):
        current = []
        for name, start in sorted(rng.choice(layouts), key=lambda x: x[1]):
            gi = model.gi_profile(name)
            ci = rng.choice(gi.ci_profiles)
            current.append(dev(ci.name, start, gi.memory_slices))
        target: Counter = Counter()
        for name, k in rng.choice(multisets):
            gi = model.gi_profile(name)
            for _ in range(k):
                target[rng.choice(gi.ci_profiles).name] += 1
        yield current, target


def _shapes(model: GpuModel, target: Counter) -> Counter:
    """The GPU-instance shapes nvidia-mig-parted's packing makes of ``target``."""
    empty = plan_gpu(model, [], [(P(n), k) for n, k in sorted(target.items())])
    assert isinstance(empty, GpuPlan)
    return Counter(d.profile for d in empty.create)


def _weight(profile: str) -> int:
    return profile.count(",") + 1 if "[cis=" in profile else 1


def _brute_keep_variants(model: GpuModel, current: list[MigDevice], target: Counter) -> int:
    """Most compute instances kept over every legal layout of the packed target."""
    shapes = _shapes(model, target)
    gi_of = {s: s.split("[", 1)[0] if "[" in s else P(s).gi_name for s in shapes}
    gi_counts: Counter = Counter()
    for shape, k in shapes.items():
        gi_counts[gi_of[shape]] += k
    key = frozenset(gi_counts.items())
    best = 0
    for lay in layouts_by_multiset(model)[key]:
        slots = {(name, s) for name, s in lay}
        kept = 0
        for shape, k in shapes.items():
            here = sum(1 for d in current if d.profile == shape and (gi_of[shape], d.placement.start) in slots)
            kept += min(k, here) * _weight(shape)
        best = max(best, kept)
    return best


@pytest.mark.parametrize("name", ["A100-SXM4-40GB", "A30-24GB"])
def test_plan_keeps_the_maximum_with_compute_instance_variants(name):
    model = CATALOG.get(name)
    rng = random.Random(f"variants-{name}")
    for current, target in _variant_cases(model, rng, 200):
        result = plan_gpu(model, current, [(P(n), k) for n, k in sorted(target.items())])
        assert isinstance(result, GpuPlan), result
        kept = sum(_weight(d.profile) for d in result.keep)
        assert kept == _brute_keep_variants(model, current, target), (current, target)
        final = list(result.keep) + list(result.create)
        assert check_layout(model, final) is None
        assert Counter(d.profile for d in final) == _shapes(model, target)
