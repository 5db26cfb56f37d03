"""The node layout that serves a mix of needs with the fewest GPUs, then the least waste: exact.

A need is ``NxSIZE``: N MIG devices, each of at least SIZE, where SIZE is
``<n>GB`` (the profile name's nominal size, ``2g.10gb`` is 10GB), ``<n>MiB``
(the catalog's memory of the instance) or a profile name (exactly that one).
Waste is what the chosen instances hold beyond what their needs asked, in MiB;
among equal waste, fewer compute slices win (3g.20gb over 4g.20gb for 20GB).
Only plain profiles (no ``+me``/``-me``/``+gfx`` variants) are used.

Method (no greedy step, so the answer is optimal):

1. per GPU model, every legal multiset of instances (the placement planner
   proves each one) and every way to assign its instances to need types gives
   a *pattern*: how many of each need type one GPU serves, with its least
   waste. Instances serving no need are never part of a best pattern.
2. a dynamic programme over (GPU, needs still open) picks one pattern per
   GPU (or none) minimising (GPUs used, waste). Ties keep the lower GPU
   indices and the earlier pattern, so the answer is deterministic.

Scaling: step 1 is bounded by the model (a few hundred multisets on a
7-slice GPU); step 2 visits at most GPUs x prod(count_i + 1) states, each
trying every pattern, so it grows with the product of the per-type counts,
not with the number of assignments. ``benchmarks/bench_ondemand.py`` times
an 8-GPU node with a 20-item mix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import product

from migmanagerd.apply.configtext import ConfigText, EntryText
from migmanagerd.catalog.model import GpuModel
from migmanagerd.errors import UsageError
from migmanagerd.ondemand.layouts import Multiset, legal_multisets
from migmanagerd.spec.profile import MigProfile, ProfileNameError

_NEED = re.compile(r"^\s*(\d+)\s*[xX]\s*(\S+)\s*$")
_SIZE = re.compile(r"^(\d+)\s*(gb|mib)$", re.I)

Vector = tuple[int, ...]


@dataclass(frozen=True, order=True)
class Need:
    """One need type: ``kind`` is "gb", "mib" or "profile"."""

    kind: str
    value: int
    profile: str = ""

    def fits(self, profile: str, memory_mib: int) -> bool:
        if self.kind == "profile":
            return profile == self.profile
        if self.kind == "gb":
            return MigProfile.parse(profile).memory_gb >= self.value
        return memory_mib >= self.value

    def waste_mib(self, profile: str, memory_mib: int) -> int:
        """What an instance of ``profile`` holds beyond this need, in MiB (nominal
        sizes for a GB need: a 1g.10gb serving 5GB wastes 5120)."""
        if self.kind == "gb":
            return (MigProfile.parse(profile).memory_gb - self.value) * 1024
        if self.kind == "mib":
            return memory_mib - self.value
        return 0

    def __str__(self) -> str:
        return self.profile if self.kind == "profile" else f"{self.value}{'GB' if self.kind == 'gb' else 'MiB'}"


def parse_need(text: str) -> tuple[int, Need]:
    m = _NEED.match(text)
    if m is None:
        raise UsageError(f"--need {text!r}: expected NxSIZE, e.g. 3x10GB, 2x20000MiB or 2x3g.20gb")
    count, size = int(m[1]), m[2]
    if count < 1:
        raise UsageError(f"--need {text!r}: the count must be at least 1")
    sm = _SIZE.match(size)
    if sm is not None:
        value = int(sm[1])
        if value < 1:
            raise UsageError(f"--need {text!r}: the size must be at least 1")
        return count, Need(sm[2].lower(), value)
    try:
        return count, Need("profile", 0, str(MigProfile.parse(size)))
    except ProfileNameError:
        raise UsageError(f"--need {text!r}: {size!r} is neither <n>GB, <n>MiB nor a MIG profile name") from None


def merge_needs(needs: Sequence[tuple[int, Need]]) -> tuple[tuple[Need, ...], Vector]:
    counts: dict[Need, int] = {}
    for n, need in needs:
        counts[need] = counts.get(need, 0) + n
    types = tuple(sorted(counts))
    return types, tuple(counts[t] for t in types)


@dataclass(frozen=True)
class Pattern:
    serves: Vector  # per need type
    waste_mib: int
    compute: int  # compute slices the instances take
    devices: tuple[tuple[str, int], ...]  # profile -> count, large first


@dataclass(frozen=True)
class GpuLayout:
    index: int
    model: GpuModel
    pattern: Pattern | None  # None: not used


@dataclass(frozen=True)
class Suggestion:
    gpus: tuple[GpuLayout, ...]
    gpus_used: int
    waste_mib: int


class NoLayout(UsageError):
    """The mix cannot be served by these GPUs (exit 1: nothing is wrong with the input)."""

    exit_code = 1


def _plain(model: GpuModel) -> list[tuple[str, int, int]]:
    """(profile, memory MiB, memory slices) of the model's plain profiles, large first."""
    out = []
    for gi in model.gi_profiles:
        if gi.attributes or gi.full_ci is None:
            continue
        out.append((gi.full_ci.name, gi.memory_mib, gi.memory_slices))
    out.sort(key=lambda t: (-t[2], -t[1], t[0]))
    return out


def _multisets(model: GpuModel) -> tuple[Multiset, ...]:
    """Every legal non-empty multiset of plain instances on ``model``, large profiles first."""
    return legal_multisets(model, tuple(p for p, _, _ in _plain(model)))


def _splits(n: int, parts: int) -> list[tuple[int, ...]]:
    """Every way to write n as an ordered sum of ``parts`` non-negative numbers."""
    if parts == 1:
        return [(n,)]
    return [(k, *rest) for k in range(n, -1, -1) for rest in _splits(n - k, parts - 1)]


def _profile_options(types: tuple[Need, ...], profile: str, n: int, memory_mib: int) -> list[tuple[Vector, int]]:
    """Every way ``n`` instances of ``profile`` can serve the need types: (served vector, waste)."""
    fit = [i for i, t in enumerate(types) if t.fits(profile, memory_mib)]
    if not fit:
        return []
    options = []
    for split in _splits(n, len(fit)):
        vec = [0] * len(types)
        waste = 0
        for i, k in zip(fit, split, strict=True):
            vec[i] += k
            waste += k * types[i].waste_mib(profile, memory_mib)
        options.append((tuple(vec), waste))
    return options


def patterns(model: GpuModel, types: tuple[Need, ...], counts: Vector) -> tuple[Pattern, ...]:
    """The least-waste pattern per served vector (each no larger than ``counts``)."""
    memory = {p: mib for p, mib, _ in _plain(model)}
    compute = {gi.full_ci.name: gi.compute_slices for gi in model.gi_profiles if gi.full_ci is not None}
    best: dict[Vector, Pattern] = {}
    for multiset in _multisets(model):
        per_profile = [_profile_options(types, p, n, memory[p]) for p, n in multiset]
        if not all(per_profile):
            continue  # an instance no need can use: the smaller multiset is better
        used = sum(compute[p] * n for p, n in multiset)
        for combo in product(*per_profile):
            vec = tuple(sum(v[i] for v, _ in combo) for i in range(len(types)))
            if any(v > c for v, c in zip(vec, counts, strict=True)):
                continue
            pat = Pattern(vec, sum(w for _, w in combo), used, multiset)
            old = best.get(vec)
            if old is None or (pat.waste_mib, pat.compute) < (old.waste_mib, old.compute):
                best[vec] = pat
    # most served first: the search finds a full answer early
    return tuple(sorted(best.values(), key=lambda p: (-sum(p.serves), p.waste_mib, p.compute, p.devices)))


Score = tuple[int, int, int, tuple["Pattern | None", ...]]  # GPUs used, waste, compute, per GPU


def _packer(counts: Vector) -> tuple[int, int, Callable[[Vector], int]]:
    """Vectors as one integer, a field per need type with a guard bit above it,
    so ``s <= rest`` in every field is one subtraction: with every guard set in
    ``rest``, no field of ``rest - s`` borrows iff every guard survives."""
    width = max(counts).bit_length() + 1
    guard = 0
    for i in range(len(counts)):
        guard |= 1 << (i * width + width - 1)

    def pack(v: Vector) -> int:
        return sum(x << (i * width) for i, x in enumerate(v))

    return width, guard, pack


def _search(order: Sequence[tuple[Pattern, ...]], counts: Vector) -> Score | None:
    """Exact: the least (GPUs, waste, compute) over one pattern (or none) per GPU.
    A memoised recursion over (GPU, needs still open)."""
    _, guard, pack = _packer(counts)
    packed = [tuple((pack(p.serves), p) for p in pats) for pats in order]

    @cache
    def best(g: int, rest: int) -> Score | None:
        if rest == 0:
            return 0, 0, 0, (None,) * (len(order) - g)
        if g == len(order):
            return None
        found: Score | None = None
        guarded = rest | guard
        for serves, pat in packed[g]:
            left = guarded - serves
            if left & guard != guard:
                continue  # some need type would go below zero
            tail = best(g + 1, left ^ guard)
            if tail is None:
                continue
            score = (tail[0] + 1, tail[1] + pat.waste_mib, tail[2] + pat.compute)
            if found is None or score < found[:3]:
                found = (*score, (pat, *tail[3]))
        skip = best(g + 1, rest)
        if skip is not None and (found is None or skip[:3] < found[:3]):
            found = (skip[0], skip[1], skip[2], (None, *skip[3]))
        return found

    return best(0, pack(counts))


def suggest(gpus: Sequence[tuple[int, GpuModel]], needs: Sequence[tuple[int, Need]]) -> Suggestion:
    if not needs:
        raise UsageError("give at least one --need")
    if not gpus:
        raise UsageError("no MIG-capable GPU to lay out")
    types, counts = merge_needs(needs)
    table = {m.name: patterns(m, types, counts) for _, m in gpus}
    result = _search([table[m.name] for _, m in gpus], counts)
    if result is None:
        asked = ", ".join(f"{c}x{t}" for t, c in zip(types, counts, strict=True))
        raise NoLayout(f"{asked} cannot be served by these {len(gpus)} GPU(s), whatever the layout")
    layouts = tuple(GpuLayout(i, m, p) for (i, m), p in zip(gpus, result[3], strict=True))
    return Suggestion(layouts, result[0], result[1])


def suggestion_config(s: Suggestion, name: str) -> ConfigText:
    """As a v1 config: identical GPUs share an entry; unused GPUs get MIG on and no devices."""
    groups: dict[tuple[int, tuple[tuple[str, int], ...]], list[int]] = {}
    models: dict[tuple[int, tuple[tuple[str, int], ...]], str] = {}
    for g in s.gpus:
        devices = g.pattern.devices if g.pattern is not None else ()
        key = (g.model.pci_ids[0], devices)
        groups.setdefault(key, []).append(g.index)
        models[key] = g.model.name + ("" if g.pattern is not None else " (unused)")
    entries = tuple(
        EntryText(tuple(ix), (pci,), True, devices, comment=models[(pci, devices)])
        for (pci, devices), ix in groups.items()
    )
    return ConfigText(name, entries, comment=f"suggested: {s.gpus_used} GPU(s) used, {s.waste_mib} MiB beyond what was asked")
