"""Placement planning for one GPU: feasibility and the minimal change.

Pure functions over the catalog's geometry. A target is a multiset of MIG
devices (``PROFILE: N`` = N GPU instances of ``PROFILE.gi_name``, each with
one compute instance of ``PROFILE``). The planner proves the target fits,
then picks the arrangement of placements that keeps the most existing
devices; everything else on the GPU is destroyed and recreated.

Search: GPU-instance placements only interact through the memory-slice
bitmask (at most 8 slices), so ``best(type i, occupied mask)`` is a small
dynamic programme over (profile type, mask) states. Each state tries the
placement combinations of one profile type in ascending order and keeps the
first one that reaches the best score, which makes the answer the
lexicographically smallest among the optimal ones: deterministic, no trial
and error against hardware.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import combinations

from migmanagerd.catalog.model import GiProfile, GpuModel, Placement
from migmanagerd.planner.types import GpuPlan, Infeasible, MigDevice
from migmanagerd.spec.profile import MigProfile, ProfileNameError

Target = Mapping[MigProfile, int] | Sequence[tuple[MigProfile, int]]


@dataclass(frozen=True)
class _Kind:
    """One distinct target device profile and how many of it are wanted."""

    profile: str  # canonical MIG device name
    gi: GiProfile
    count: int


def plan_gpu(model: GpuModel, current: Sequence[MigDevice], target: Target) -> GpuPlan | Infeasible:
    """The minimal plan that turns ``current`` into ``target`` on one GPU of ``model``."""
    kinds = _resolve_target(model, target)
    if isinstance(kinds, Infeasible):
        return kinds
    reason = _budget_reason(model, kinds)
    if reason is not None:
        return Infeasible(reason)

    ordered = sorted(current, key=_device_sort_key)
    keepable: dict[str, dict[int, MigDevice]] = {}  # profile -> start -> first device there
    for dev in ordered:
        if _keepable(model, dev):
            keepable.setdefault(dev.profile, {}).setdefault(dev.placement.start, dev)

    kinds_t = tuple(kinds)
    keep_starts = tuple(frozenset(keepable.get(k.profile, {})) for k in kinds_t)
    result = _search(kinds_t, keep_starts)
    if result is None:
        return Infeasible(_fragmentation_reason(model, kinds_t))

    _, choice = result
    keep: list[MigDevice] = []
    create: list[MigDevice] = []
    for kind, starts in zip(kinds_t, choice, strict=True):
        for s in starts:
            existing = keepable.get(kind.profile, {}).get(s)
            if existing is not None:
                keep.append(existing)
            else:
                create.append(MigDevice(placement=kind.gi.placement(s), profile=kind.profile))
    kept_ids = {id(d) for d in keep}
    destroy = [d for d in ordered if id(d) not in kept_ids]
    by_place = lambda d: (d.placement, d.profile)  # noqa: E731
    return GpuPlan(
        keep=tuple(sorted(keep, key=by_place)),
        destroy=tuple(sorted(destroy, key=_device_sort_key)),
        create=tuple(sorted(create, key=by_place)),
    )


def check_layout(model: GpuModel, devices: Sequence[MigDevice]) -> str | None:
    """None when ``devices`` is a legal MIG layout of ``model``, else the reason."""
    items: list[tuple[str, Placement]] = []
    for dev in devices:
        try:
            prof = MigProfile.parse(dev.profile)
        except ProfileNameError:
            return f"{dev.profile} at {_fmt_place(dev.placement)} is not a single-compute-instance MIG device"
        gi = model.gi_profile(prof.gi_name)
        if gi is None:
            return f"profile {prof.gi_name} does not exist on {model.name}"
        if gi.ci_profile(str(prof)) is None:
            return f"compute instance {prof} does not exist in a {gi.name} GPU instance on {model.name}"
        items.append((gi.name, dev.placement))
    return check_gi_layout(model, items)


def check_gi_layout(model: GpuModel, instances: Sequence[tuple[str, Placement]]) -> str | None:
    """Like ``check_layout`` for bare GPU instances ``(GI profile name, placement)``."""
    counts: Counter[str] = Counter()
    profiles: dict[str, GiProfile] = {}
    compute = 0
    used: list[tuple[str, Placement]] = []
    for name, place in instances:
        gi = model.gi_profile(name)
        if gi is None:
            return f"profile {name} does not exist on {model.name}"
        profiles[name] = gi
        if place.size != gi.memory_slices or place.start not in gi.placements:
            return (
                f"{name} at {_fmt_place(place)} is not a legal placement on {model.name} "
                f"(legal: {_fmt_starts(gi)})"
            )
        for other_name, other in used:
            if place.overlaps(other):
                return (
                    f"{name} at {_fmt_place(place)} overlaps {other_name} at {_fmt_place(other)} "
                    f"in memory slices"
                )
        used.append((name, place))
        counts[name] += 1
        compute += gi.compute_slices
    for name, n in counts.items():
        if n > profiles[name].max_count:
            return f"{name} x{n} present, {model.name} allows at most {profiles[name].max_count}"
    if compute > model.compute_slices:
        return f"needs {compute} of {model.compute_slices} compute slices on {model.name}"
    return _exclusive_reason(model, counts)


# ----------------------------------------------------------------- target checks


def _resolve_target(model: GpuModel, target: Target) -> list[_Kind] | Infeasible:
    items = target.items() if isinstance(target, Mapping) else target
    counts: dict[str, int] = {}
    gis: dict[str, GiProfile] = {}
    for raw, n in items:
        try:
            prof = raw if isinstance(raw, MigProfile) else MigProfile.parse(str(raw))
        except ProfileNameError as exc:
            return Infeasible(str(exc))
        if n < 0:
            return Infeasible(f"{prof} x{n}: a count cannot be negative")
        if n == 0:
            continue
        gi = model.gi_profile(prof.gi_name)
        if gi is None:
            have = ", ".join(p.name for p in model.gi_profiles)
            return Infeasible(f"profile {prof} does not exist on {model.name} (it has: {have})")
        if gi.name != prof.gi_name:  # a former name: plan with the name the GPU reports
            now = MigProfile.parse(gi.name)
            prof = MigProfile(prof.gpu_slices, now.memory_gb, prof.compute_slices, prof.sign, prof.attributes)
        if gi.ci_profile(str(prof)) is None:
            have = ", ".join(ci.name for ci in gi.ci_profiles)
            return Infeasible(
                f"compute instance {prof} does not exist in a {gi.name} GPU instance "
                f"on {model.name} (it has: {have})"
            )
        key = str(prof)
        counts[key] = counts.get(key, 0) + n
        gis[key] = gi
    kinds = [_Kind(p, gis[p], n) for p, n in counts.items()]
    # Big instances first: they constrain placement most, so the search prunes early
    # and the chosen layout reads like nvidia-smi's (large GIs at low slices).
    kinds.sort(key=lambda k: (-k.gi.memory_slices, -k.gi.compute_slices, k.gi.name, k.profile))
    return kinds


def _budget_reason(model: GpuModel, kinds: Sequence[_Kind]) -> str | None:
    per_gi: dict[str, list[_Kind]] = {}
    for k in kinds:
        per_gi.setdefault(k.gi.name, []).append(k)
    for name, ks in per_gi.items():
        total = sum(k.count for k in ks)
        gi = ks[0].gi
        if total > gi.max_count:
            detail = ""
            if len(ks) > 1 or ks[0].profile != name:
                detail = " (" + " + ".join(f"{k.profile} x{k.count}" for k in ks) + ")"
            return f"{name} x{total}{detail} requested, {model.name} allows at most {gi.max_count}"
    reason = _exclusive_reason(model, Counter({k.gi.name: k.count for k in kinds}))
    if reason is not None:
        return reason
    memory = sum(k.gi.memory_slices * k.count for k in kinds)
    if memory > model.memory_slices:
        return f"needs {memory} of {model.memory_slices} memory slices on {model.name} ({_fmt_kinds(kinds)})"
    compute = sum(k.gi.compute_slices * k.count for k in kinds)
    if compute > model.compute_slices:
        return f"needs {compute} of {model.compute_slices} compute slices on {model.name} ({_fmt_kinds(kinds)})"
    return None


def _exclusive_reason(model: GpuModel, counts: Mapping[str, int]) -> str | None:
    for group in model.exclusive_groups:
        present = [n for n in group if counts.get(n, 0) > 0]
        if len(present) > 1:
            return f"{' and '.join(present)} cannot be used together on {model.name}"
    return None


def _fragmentation_reason(model: GpuModel, kinds: Sequence[_Kind]) -> str:
    starts = "; ".join(f"{name} at {_fmt_starts(gi)}" for name, gi in _distinct_gis(kinds))
    return (
        f"{_fmt_kinds(kinds)} fits the slice budgets of {model.name} but no placement "
        f"arrangement exists (legal memory-slice starts: {starts})"
    )


# ----------------------------------------------------------------- the search


def _search(
    kinds: tuple[_Kind, ...], keep_starts: tuple[frozenset[int], ...]
) -> tuple[int, tuple[tuple[int, ...], ...]] | None:
    """Best (kept count, starts per kind) or None if no arrangement exists."""
    options = tuple(_combos(k.gi.placements, k.gi.memory_slices, k.count) for k in kinds)
    gains = tuple(
        tuple(len(keep_starts[i].intersection(starts)) for starts, _ in options[i]) for i in range(len(kinds))
    )

    @cache
    def best(i: int, mask: int) -> tuple[int, tuple[tuple[int, ...], ...]] | None:
        if i == len(kinds):
            return 0, ()
        found: tuple[int, tuple[tuple[int, ...], ...]] | None = None
        for (starts, m), gain in zip(options[i], gains[i], strict=True):
            if m & mask:
                continue
            rest = best(i + 1, mask | m)
            if rest is None:
                continue
            score = gain + rest[0]
            if found is None or score > found[0]:
                found = (score, (starts, *rest[1]))
        return found

    return best(0, 0)


@lru_cache(maxsize=4096)
def _combos(starts: tuple[int, ...], size: int, count: int) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Every set of ``count`` pairwise disjoint starts, ascending, with its slice mask."""
    unit = (1 << size) - 1
    out = []
    for combo in combinations(starts, count):
        mask = 0
        for s in combo:
            bit = unit << s
            if mask & bit:
                break
            mask |= bit
        else:
            out.append((combo, mask))
    return tuple(out)


# ----------------------------------------------------------------- helpers


def _keepable(model: GpuModel, dev: MigDevice) -> bool:
    try:
        prof = MigProfile.parse(dev.profile)
    except ProfileNameError:
        return False
    if str(prof) != dev.profile:
        return False  # only canonical names, as backends report them
    gi = model.gi_profile(prof.gi_name)
    if gi is None or gi.ci_profile(dev.profile) is None:
        return False
    return dev.placement.size == gi.memory_slices and dev.placement.start in gi.placements


def _device_sort_key(d: MigDevice) -> tuple[Placement, str, str, int]:
    return (d.placement, d.profile, d.uuid or "", d.gi_id if d.gi_id is not None else -1)


def _distinct_gis(kinds: Sequence[_Kind]) -> list[tuple[str, GiProfile]]:
    seen: dict[str, GiProfile] = {}
    for k in kinds:
        seen.setdefault(k.gi.name, k.gi)
    return list(seen.items())


def _fmt_kinds(kinds: Sequence[_Kind]) -> str:
    return ", ".join(f"{k.profile} x{k.count}" for k in kinds)


def _fmt_starts(gi: GiProfile) -> str:
    return ",".join(str(s) for s in gi.placements) + f" (size {gi.memory_slices})"


def _fmt_place(p: Placement) -> str:
    return f"{p.start}:{p.size}"
