"""The legal layouts of one GPU model, as multisets of plain MIG profiles.

Both the catalog-derived allowed geometries (``geometries``) and ``suggest``
search these; they differ only in the order they list the profiles in.
"""

from __future__ import annotations

from functools import cache

from migmanagerd.catalog.model import GpuModel
from migmanagerd.planner.placement import plan_gpu
from migmanagerd.planner.types import Infeasible
from migmanagerd.spec.profile import MigProfile

Multiset = tuple[tuple[str, int], ...]  # (profile name, count), no zero counts


def fits(model: GpuModel, target: Multiset) -> bool:
    """The exact planner places ``target`` on an empty GPU of ``model``."""
    parsed = tuple((MigProfile.parse(p), n) for p, n in target)
    return not isinstance(plan_gpu(model, (), parsed), Infeasible)


@cache
def legal_multisets(model: GpuModel, profiles: tuple[str, ...]) -> tuple[Multiset, ...]:
    """Every non-empty multiset of ``profiles`` that fits ``model``, profiles
    in the given order. Counts grow one at a time and stop at the first that
    does not fit: a multiset that does not fit has no superset that does."""
    found: list[Multiset] = []

    def grow(i: int, chosen: Multiset) -> None:
        if i == len(profiles):
            if chosen:
                found.append(chosen)
            return
        grow(i + 1, chosen)
        n = 1
        while fits(model, (*chosen, (profiles[i], n))):
            grow(i + 1, (*chosen, (profiles[i], n)))
            n += 1

    grow(0, ())
    return tuple(found)
