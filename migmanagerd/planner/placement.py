"""Placement planning for one GPU: feasibility and the minimal change.

Pure functions over the catalog's geometry. A target counts compute
instances (``PROFILE: N`` = N CIs of ``PROFILE``); ``planner.packing`` groups
them into GPU instances exactly as nvidia-mig-parted does, and each GPU
instance with its CIs is one ``MigDevice`` named by its shape
(``packing.shape_name``). The planner proves the GPU instances fit, then
picks the arrangement of placements that keeps the most existing compute
instances; every other GPU instance is destroyed and recreated whole.

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

from migmanagerd.catalog.model import CiProfile, GiProfile, GpuModel, Placement
from migmanagerd.planner import packing
from migmanagerd.planner.adjust import adjust
from migmanagerd.planner.packing import CiItem, GiGroup, fits_in, pack, peer_order, shape_ci_names, shape_name
from migmanagerd.planner.types import GiAdjust, GpuPlan, Infeasible, MigCi, MigDevice
from migmanagerd.spec.profile import MigProfile, ProfileNameError

Target = Mapping[MigProfile, int] | Sequence[tuple[MigProfile, int]]


@dataclass(frozen=True)
class _Kind:
    """One distinct target GPU-instance shape and how many of it are wanted."""

    profile: str  # shape name (packing.shape_name)
    gi: GiProfile
    count: int
    cis: tuple[CiProfile, ...] = ()  # creation order


def plan_gpu(model: GpuModel, current: Sequence[MigDevice], target: Target) -> GpuPlan | Infeasible:
    """The minimal plan that turns ``current`` into ``target`` on one GPU of ``model``."""
    items = _resolve_target(model, target)
    if isinstance(items, Infeasible):
        return items
    compute = sum(it.ci.compute_slices for it in items)
    if compute > model.compute_slices:
        # No grouping can fit: say why the first one does not, without trying the rest.
        by_peer = peer_order(items)
        wanted = ", ".join(f"{n} x{k}" for n, k in Counter(it.name for it in by_peer).items())
        first = _groups_reason(model, packing.group(by_peer))
        return Infeasible(first or f"compute instances need {compute} of {model.compute_slices} compute slices on {model.name} ({wanted})")
    if _groups_reason(model, _fewest_gis(items)) is not None:
        # not even the fewest GPU instances any grouping could need fit, so no
        # ordering will: say why the first one does not, without trying them all
        first = _groups_reason(model, packing.group(peer_order(items)))
        if first is not None:
            return Infeasible(first)
    fitted: dict[str, _Fit] = {}
    packed = pack(items, lambda groups: _groups_reason(model, groups, fitted))
    if isinstance(packed, str):
        return Infeasible(packed)
    kinds_t, result = fitted["fit"]  # the packed groups' kinds and their arrangement from empty

    ordered = sorted(current, key=_device_sort_key)
    actions = _reuse_actions(model, ordered, kinds_t)
    gains = tuple({s: _kept_cis(kind, a) for s, a in here.items()} for kind, here in zip(kinds_t, actions, strict=True))
    if any(gains):  # something to keep: search again for the arrangement that keeps most
        result = _search(kinds_t, gains)
    if result is None:
        return Infeasible(_fragmentation_reason(model, kinds_t))
    return _assemble(ordered, kinds_t, actions, result[1])


def _reuse_actions(
    model: GpuModel, ordered: Sequence[MigDevice], kinds: Sequence[_Kind]
) -> list[dict[int, MigDevice | GiAdjust]]:
    """Per kind and start: the existing GI kept there as is, or adjusted."""
    keepable: dict[str, dict[int, MigDevice]] = {}  # shape -> start -> first device there
    reusable: dict[str, dict[int, MigDevice]] = {}  # GI profile -> start -> first GI there
    for dev in ordered:
        if _keepable(model, dev):
            keepable.setdefault(dev.profile, {}).setdefault(dev.placement.start, dev)
        gi = model.gi_profile(dev.profile.split("[", 1)[0] if "[" in dev.profile else _gi_of(dev.profile))
        if gi is not None and dev.placement == gi.placement(dev.placement.start) and dev.placement.start in gi.placements:
            reusable.setdefault(gi.name, {}).setdefault(dev.placement.start, dev)
    actions: list[dict[int, MigDevice | GiAdjust]] = []
    for kind in kinds:
        here: dict[int, MigDevice | GiAdjust] = {}
        for start, dev in reusable.get(kind.gi.name, {}).items():
            exact = keepable.get(kind.profile, {}).get(start)
            changed = adjust(kind.gi, dev, kind.cis, _planned(kind, start)) if exact is None else None
            if exact is not None or changed is not None:
                here[start] = exact if exact is not None else changed  # type: ignore[assignment]
        actions.append(here)
    return actions


def _assemble(
    ordered: Sequence[MigDevice],
    kinds: Sequence[_Kind],
    actions: Sequence[dict[int, MigDevice | GiAdjust]],
    choice: Sequence[tuple[int, ...]],
) -> GpuPlan:
    keep: list[MigDevice] = []
    changes: list[GiAdjust] = []
    create: list[MigDevice] = []
    for kind, here, starts in zip(kinds, actions, choice, strict=True):
        for s in starts:
            action = here.get(s)
            if isinstance(action, MigDevice):
                keep.append(action)
            elif isinstance(action, GiAdjust):
                changes.append(action)
            else:
                create.append(_planned(kind, s))
    kept_ids = {id(d) for d in keep} | {id(a.current) for a in changes}
    destroy = [d for d in ordered if id(d) not in kept_ids]

    def by_place(d: MigDevice) -> tuple[Placement, str]:
        return (d.placement, d.profile)

    return GpuPlan(
        keep=tuple(sorted(keep, key=by_place)),
        destroy=tuple(sorted(destroy, key=_device_sort_key)),
        create=tuple(sorted(create, key=by_place)),
        adjust=tuple(sorted(changes, key=lambda a: by_place(a.target))),
    )


def _gi_of(profile: str) -> str:
    try:
        return MigProfile.parse(profile).gi_name
    except ProfileNameError:
        return ""


def _planned(kind: _Kind, start: int) -> MigDevice:
    """A new GPU instance of ``kind`` at ``start``; a single-CI device is named
    by its CI and lists no CIs, as it always did."""
    cis = tuple(MigCi(ci.name) for ci in kind.cis) if len(kind.cis) > 1 else ()
    return MigDevice(placement=kind.gi.placement(start), profile=kind.profile, cis=cis)


def _kept_cis(kind: _Kind, action: MigDevice | GiAdjust) -> int:
    if isinstance(action, GiAdjust):
        return len(action.current.cis) - len(action.destroy)
    return max(1, len(kind.cis))


def check_layout(model: GpuModel, devices: Sequence[MigDevice]) -> str | None:
    """None when ``devices`` is a legal MIG layout of ``model``, else the reason."""
    items: list[tuple[str, Placement]] = []
    for dev in devices:
        from_shape = shape_ci_names(dev.profile)
        names = [c.profile for c in dev.cis] if dev.cis else from_shape if from_shape is not None else [dev.profile]
        gi_names: set[str] = set()
        cis: list[CiProfile] = []
        gi: GiProfile | None = None
        for name in names:
            try:
                prof = MigProfile.parse(name)
            except ProfileNameError:
                return f"{dev.profile} at {_fmt_place(dev.placement)} is not a MIG device of known compute instances"
            gi = model.gi_profile(prof.gi_name)
            if gi is None:
                return f"profile {prof.gi_name} does not exist on {model.name}"
            ci = gi.ci_profile(str(prof))
            if ci is None:
                return f"compute instance {prof} does not exist in a {gi.name} GPU instance on {model.name}"
            gi_names.add(gi.name)
            cis.append(ci)
        if not names or gi is None:
            return f"{dev.profile} at {_fmt_place(dev.placement)}: a GPU instance without compute instances is not a MIG device"
        if len(gi_names) != 1:
            return f"{dev.profile} at {_fmt_place(dev.placement)} mixes compute instances of several GPU-instance profiles"
        if not cis or not fits_in(gi, cis[:-1], cis[-1]):
            return f"{dev.profile} at {_fmt_place(dev.placement)}: a {gi.name} GPU instance cannot hold these compute instances"
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


def _resolve_target(model: GpuModel, target: Target) -> list[CiItem] | Infeasible:
    """One ``CiItem`` per compute instance the target asks for."""
    items = target.items() if isinstance(target, Mapping) else target
    out: list[CiItem] = []
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
        ci = gi.ci_profile(str(prof))
        if ci is None:
            have = ", ".join(c.name for c in gi.ci_profiles)
            return Infeasible(
                f"compute instance {prof} does not exist in a {gi.name} GPU instance "
                f"on {model.name} (it has: {have})"
            )
        plus = ",".join(prof.attributes) if prof.sign == "+" else ""
        item = CiItem(str(prof), gi, ci, (prof.gpu_slices, prof.compute_slices, plus))
        out.extend([item] * n)
    return out


def _kinds(groups: Sequence[GiGroup]) -> list[_Kind]:
    counts: Counter[str] = Counter()
    first: dict[str, GiGroup] = {}
    for g in groups:
        counts[g.shape] += 1
        first.setdefault(g.shape, g)
    kinds = [_Kind(shape, first[shape].gi, n, first[shape].cis) for shape, n in counts.items()]
    # Big instances first: they constrain placement most, so the search prunes early
    # and the chosen layout reads like nvidia-smi's (large GIs at low slices).
    kinds.sort(key=lambda k: (-k.gi.memory_slices, -k.gi.compute_slices, k.gi.name, k.profile))
    return kinds


def _fewest_gis(items: Sequence[CiItem]) -> list[GiGroup]:
    """A lower bound per GI profile on the GPU instances any grouping makes:
    enough compute slices for its CIs, and room for each CI profile's count."""
    by_gi: dict[str, list[CiItem]] = {}
    for it in items:
        by_gi.setdefault(it.gi.name, []).append(it)
    out: list[GiGroup] = []
    for its in by_gi.values():
        gi = its[0].gi
        need = -(-sum(it.ci.compute_slices for it in its) // gi.compute_slices)
        for name, n in Counter(it.name for it in its).items():
            ci = next(it.ci for it in its if it.name == name)
            need = max(need, -(-n // ci.max_count))
        out += [GiGroup(gi, (its[0].ci,))] * need
    return out


_Fit = tuple[tuple[_Kind, ...], "tuple[int, tuple[tuple[int, ...], ...]] | None"]


def _groups_reason(model: GpuModel, groups: Sequence[GiGroup], fitted: dict[str, _Fit] | None = None) -> str | None:
    """None when these GPU instances fit an empty GPU of ``model``; then
    ``fitted["fit"]`` holds their kinds and arrangement."""
    kinds = tuple(_kinds(groups))
    reason = _budget_reason(model, kinds)
    if reason is not None:
        return reason
    found = _search(kinds, tuple({} for _ in kinds))
    if found is None:
        return _fragmentation_reason(model, kinds)
    if fitted is not None:
        fitted["fit"] = (kinds, found)
    return None


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
    kinds: tuple[_Kind, ...], keep_gains: tuple[Mapping[int, int], ...]
) -> tuple[int, tuple[tuple[int, ...], ...]] | None:
    """Best (kept compute instances, starts per kind) or None if no arrangement
    exists. ``keep_gains[i][start]``: how many existing CIs placing kind i at
    ``start`` keeps."""
    options = tuple(_combos(k.gi.placements, k.gi.memory_slices, k.count) for k in kinds)
    gains = tuple(
        tuple(sum(keep_gains[i].get(s, 0) for s in starts) for starts, _ in options[i]) for i in range(len(kinds))
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
    names = [c.profile for c in dev.cis] or shape_ci_names(dev.profile) or []
    if len(names) != 1:
        gi = model.gi_profile(dev.profile.split("[", 1)[0])
        if gi is None or not names:
            return False
        cis = [gi.ci_profile(n) for n in names]
        if any(ci is None for ci in cis) or shape_name(gi, [c for c in cis if c]) != dev.profile:
            return False
    else:
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
