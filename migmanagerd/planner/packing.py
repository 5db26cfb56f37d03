"""Which compute instances share a GPU instance: nvidia-mig-parted's packing.

A config counts compute instances (``"1c.3g.20gb": 2`` is two 1-slice CIs of
a 3g.20gb GPU instance), not GPU instances. nvidia-mig-parted's SetMigConfig
(pkg/mig/config/config.go) decides how they are grouped into GPU instances,
and docs/config-format.md states the rule this module implements:

1. Flatten the entry into one item per compute instance and sort the items by
   GPU-instance slices descending, then CI slices descending, then the ``+``
   attributes (joined with ``,``) descending as strings. Items that rule
   leaves tied are different GI profiles of the same size (``1g.10gb`` and
   ``1g.20gb``, ``2g.48gb`` and ``2g.48gb-me``); we order those by GI name so
   the result never depends on map order (the peer's sort is unstable there).
2. Walk an ordering: an item goes into the GPU instance opened last when that
   one has the same GI profile and still has room for the CI (the CI
   profile's count in one GI, and a free compute-slice start, taken first-free
   from the profile's starts as the driver does); otherwise it opens a new GPU
   instance.
3. The orderings are tried in the peer's order (the sorted list first, then
   its distinct permutations as its ``iteratePermutationsUntilSuccess``
   enumerates them); the first whose GPU instances fit the GPU wins.

Pure functions over the catalog; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from migmanagerd.catalog.model import CiProfile, GiProfile

# Distinct orderings tried before giving up. A GPU holds at most 8 compute
# slices, so at most 8 CIs and 8! orderings; the cap only bounds a bug.
MAX_ORDERINGS = 40320


@dataclass(frozen=True)
class CiItem:
    """One compute instance a config asks for."""

    name: str  # canonical CI profile name, e.g. "1c.3g.20gb"
    gi: GiProfile
    ci: CiProfile
    sort_key: tuple[int, int, str]  # the peer's key: G, C, "+" attributes

    @property
    def order_key(self) -> tuple[int, int, str, str]:
        g, c, attrs = self.sort_key
        # descending G, C, attribute string; then GI name for the peer's ties
        return (-g, -c, _desc(attrs), self.gi.name)


@dataclass(frozen=True)
class GiGroup:
    """One GPU instance to create and its compute instances, in creation order."""

    gi: GiProfile
    cis: tuple[CiProfile, ...]

    @property
    def shape(self) -> str:
        return shape_name(self.gi, self.cis)


def shape_name(gi: GiProfile, cis: Sequence[CiProfile]) -> str:
    """The planner's name for a GPU instance with these CIs.

    One CI: the CI profile's own name (``1c.3g.20gb``, ``3g.20gb``), as before
    packing existed. Otherwise ``GI[cis=AC,BC,...]`` with the CI sizes in
    creation order (largest first), e.g. ``3g.20gb[cis=2c,1c]``; a GI without
    CIs is ``3g.20gb[cis=]``.
    """
    if len(cis) == 1:
        return cis[0].name
    labels = sorted((ci.compute_slices for ci in cis), reverse=True)
    return f"{gi.name}[cis={','.join(f'{n}c' for n in labels)}]"


def shape_ci_names(shape: str) -> list[str] | None:
    """The CI profile names a shape name stands for (``3g.20gb[cis=2c,1c]`` ->
    ``["2c.3g.20gb", "1c.3g.20gb"]``; ``1c.3g.20gb`` -> itself), or None when
    ``shape`` is not of the ``GI[cis=…]`` form nor a plain name."""
    if "[" not in shape:
        return [shape]
    gi_name, _, rest = shape.partition("[cis=")
    if not rest.endswith("]") or "[" in gi_name:
        return None
    labels = [x for x in rest[:-1].split(",") if x]
    g = gi_name.split("g.", 1)[0]
    out = []
    for label in labels:
        if not label.endswith("c") or not label[:-1].isdigit():
            return None
        out.append(gi_name if label[:-1] == g else f"{label}.{gi_name}")
    return out


def ci_start(gi: GiProfile, ci: CiProfile, taken: int) -> int | None:
    """Where the driver puts ``ci`` in a GI whose used compute slices are ``taken``
    (bit mask): the first of its starts that is free, or None."""
    starts = ci.placements or tuple(range(0, gi.compute_slices - ci.compute_slices + 1, ci.compute_slices))
    unit = (1 << ci.compute_slices) - 1
    for s in starts:
        if s + ci.compute_slices <= gi.compute_slices and not (unit << s) & taken:
            return s
    return None


def fits_in(gi: GiProfile, cis: Sequence[CiProfile], extra: CiProfile) -> bool:
    """Whether ``extra`` can be created in a GI already holding ``cis`` (created in that order)."""
    taken = 0
    for ci in cis:
        s = ci_start(gi, ci, taken)
        if s is None:
            return False
        taken |= ((1 << ci.compute_slices) - 1) << s
    if sum(1 for ci in cis if ci.nvml_id == extra.nvml_id) >= extra.max_count:
        return False
    return ci_start(gi, extra, taken) is not None


def peer_order(items: Sequence[CiItem]) -> list[CiItem]:
    """Step 1: the sorted list nvidia-mig-parted's Flatten returns."""
    return sorted(items, key=lambda it: it.order_key)


def group(order: Sequence[CiItem]) -> tuple[GiGroup, ...]:
    """Step 2: the GPU instances one ordering builds."""
    groups: list[GiGroup] = []
    for it in order:
        last = groups[-1] if groups else None
        if last is not None and last.gi.name == it.gi.name and fits_in(last.gi, last.cis, it.ci):
            groups[-1] = GiGroup(last.gi, (*last.cis, it.ci))
        else:
            groups.append(GiGroup(it.gi, (it.ci,)))
    return tuple(groups)


def orderings(items: Sequence[CiItem]) -> Iterator[tuple[CiItem, ...]]:
    """Step 3's order: the peer's swap-based enumeration of distinct permutations,
    starting with ``items`` itself."""
    seq = list(items)

    def rec(i: int) -> Iterator[tuple[CiItem, ...]]:
        if i >= len(seq):
            yield tuple(seq)
            return
        for j in range(i, len(seq)):
            if any(seq[k].name == seq[j].name for k in range(i, j)):
                continue  # the same profile already tried at position i
            seq[i], seq[j] = seq[j], seq[i]
            yield from rec(i + 1)
            seq[i], seq[j] = seq[j], seq[i]

    return rec(0)


def pack(items: Sequence[CiItem], reason: Callable[[tuple[GiGroup, ...]], str | None]) -> tuple[GiGroup, ...] | str:
    """The GPU instances of the first ordering whose groups fit (``reason`` None),
    or the first ordering's reason why not."""
    first: str | None = None
    seen: set[tuple[str, ...]] = set()
    if not _can_share(items):
        # every ordering makes the same GPU instances: one is enough
        groups = group(peer_order(items))
        why = reason(groups)
        return groups if why is None else why
    for n, order in enumerate(orderings(peer_order(items))):
        if n >= MAX_ORDERINGS:
            break
        groups = group(order)
        key = tuple(sorted(g.shape for g in groups))
        if key in seen:
            continue
        seen.add(key)
        why = reason(groups)
        if why is None:
            return groups
        if first is None:
            first = why
    return first if first is not None else "no compute instances requested"


def _can_share(items: Sequence[CiItem]) -> bool:
    """Whether two items could ever share a GPU instance: same GI profile and
    at least one of them smaller than the whole GI."""
    seen: dict[str, int] = {}
    partial: set[str] = set()
    for it in items:
        seen[it.gi.name] = seen.get(it.gi.name, 0) + 1
        if it.ci.compute_slices < it.gi.compute_slices:
            partial.add(it.gi.name)
    return any(seen[name] > 1 for name in partial)


def _desc(text: str) -> str:
    """A key that sorts strings descending (attribute strings are ASCII)."""
    return "".join(chr(0x10FFFF - ord(ch)) for ch in text) + chr(0x10FFFF)
