"""The plan that turns a GPU into an exact layout (``restore`` of a checkpoint).

A config names compute instances and leaves placements to the planner; a
checkpoint names each GPU instance at its placement with its compute
instances. The plan keeps every existing GPU instance that already is one of
the pinned ones (same placement, same CIs, and the same CI starts where the
checkpoint has them) and replaces the rest. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from migmanagerd.catalog.model import GpuModel
from migmanagerd.planner.packing import shape_name
from migmanagerd.planner.placement import check_gi_layout, check_layout
from migmanagerd.planner.types import GpuPlan, Infeasible, MigCi, MigDevice
from migmanagerd.spec.types import PinnedInstance


def pinned_device(model: GpuModel, pin: PinnedInstance) -> MigDevice | str:
    """The ``MigDevice`` to create for ``pin`` (CIs in creation order), or why it cannot exist."""
    gi = model.gi_profile(pin.gi_profile)
    if gi is None:
        return f"GPU instance profile {pin.gi_profile} does not exist on {model.name}"
    cis = []
    for name, _ in pin.cis:
        ci = gi.ci_profile(name)
        if ci is None:
            return f"compute instance {name} does not exist in a {gi.name} GPU instance on {model.name}"
        cis.append(ci)
    # The driver places each CI at the first free start of its profile, so
    # creating them in start order (largest first where starts are unknown)
    # puts every CI back where a left-packed GI had it.
    order = sorted(range(len(pin.cis)), key=lambda i: (pin.cis[i][1] is None, pin.cis[i][1] or 0, -cis[i].compute_slices))
    ordered = [pin.cis[i] for i in order]
    shape = shape_name(gi, [cis[i] for i in order]) if cis else f"{gi.name}[cis=]"
    return MigDevice(
        placement=gi.placement(pin.start),
        profile=shape,
        cis=tuple(MigCi(name, start=start) for name, start in ordered) if len(ordered) > 1 else (),
    )


def _same(dev: MigDevice, want: MigDevice, pin: PinnedInstance) -> bool:
    if dev.placement != want.placement or dev.profile != want.profile:
        return False
    if any(start is None for _, start in pin.cis):
        return True
    have = sorted((c.profile, c.start) for c in dev.cis)
    return have == sorted(pin.cis)


def plan_exact(model: GpuModel, current: Sequence[MigDevice], layout: Sequence[PinnedInstance]) -> GpuPlan | Infeasible:
    """Keep what already matches ``layout``, destroy the rest, create what is missing."""
    wanted: list[tuple[MigDevice, PinnedInstance]] = []
    for pin in layout:
        dev = pinned_device(model, pin)
        if isinstance(dev, str):
            return Infeasible(dev)
        wanted.append((dev, pin))
    # GI placements first (a checkpoint may hold a GI without CIs, which
    # check_layout would refuse as a MIG device), then each GI's CIs
    reason = check_gi_layout(model, [(p.gi_profile, d.placement) for d, p in wanted])
    if reason is None:
        reason = check_layout(model, [d for d, p in wanted if p.cis])
    if reason is not None:
        return Infeasible(reason)
    keep: list[MigDevice] = []
    create: list[MigDevice] = []
    left = list(current)
    for want, pin in wanted:
        match = next((d for d in left if _same(d, want, pin)), None)
        if match is None:
            create.append(want)
        else:
            keep.append(match)
            left.remove(match)
    return GpuPlan(keep=tuple(keep), destroy=tuple(left), create=tuple(create))
