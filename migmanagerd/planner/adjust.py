"""Reusing an existing GPU instance whose compute instances differ from a planned one.

Minimal change for compute instances: when a planned GPU instance lands on
an existing GI of the same profile at the same placement, the CIs both have
stay (with their UUIDs), the existing GI's extra CIs are destroyed and the
missing ones created, instead of rebuilding the whole GI. That is possible
when the missing CIs fit next to the kept ones where the driver puts them
(each at the first free start of its profile, planner.packing.ci_start).
Pure; no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations, product

from migmanagerd.catalog.model import CiProfile, GiProfile
from migmanagerd.planner.packing import ci_start
from migmanagerd.planner.types import GiAdjust, MigCi, MigDevice


def adjust(gi: GiProfile, dev: MigDevice, want: Sequence[CiProfile], target: MigDevice) -> GiAdjust | None:
    """How to turn ``dev`` (an existing GI of profile ``gi``) into ``target``
    (CIs ``want`` in creation order) keeping at least one CI, or None."""
    if not dev.cis or any(c.start is None or c.ci_id is None for c in dev.cis):
        return None
    by_name = {ci.name: ci for ci in gi.ci_profiles}
    if any(c.profile not in by_name for c in dev.cis):
        return None
    wanted = Counter(ci.name for ci in want)
    have: dict[str, list[MigCi]] = {}
    for c in sorted(dev.cis, key=lambda c: (c.start or 0, c.ci_id or 0)):
        have.setdefault(c.profile, []).append(c)
    names = sorted(have)
    # which CIs of each profile to keep: the most possible, trying every
    # choice among equal ones (a GI holds at most 8 CIs)
    choices = [list(combinations(have[n], min(len(have[n]), wanted[n]))) for n in names]
    for pick in product(*choices):
        kept = [c for group in pick for c in group]
        if not kept:
            return None
        missing = wanted - Counter(c.profile for c in kept)
        order: list[CiProfile] = []
        for ci in want:  # creation order, as planned
            if missing[ci.name] > 0:
                order.append(ci)
                missing[ci.name] -= 1
        if _fits(gi, kept, order, by_name):
            kept_ids = {c.ci_id for c in kept}
            destroy = tuple(c for c in dev.cis if c.ci_id not in kept_ids)
            return GiAdjust(dev, target, destroy, tuple(ci.name for ci in order))
    return None


def _fits(gi: GiProfile, kept: Sequence[MigCi], order: Sequence[CiProfile], by_name: dict[str, CiProfile]) -> bool:
    taken = 0
    per: Counter[str] = Counter()
    for c in kept:
        taken |= ((1 << by_name[c.profile].compute_slices) - 1) << (c.start or 0)
        per[c.profile] += 1
    for ci in order:
        if per[ci.name] >= ci.max_count:
            return False
        s = ci_start(gi, ci, taken)
        if s is None:
            return False
        taken |= ((1 << ci.compute_slices) - 1) << s
        per[ci.name] += 1
    return True
