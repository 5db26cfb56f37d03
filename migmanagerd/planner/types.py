"""What the planner takes and returns. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from migmanagerd.catalog.model import Placement


@dataclass(frozen=True, order=True)
class MigCi:
    """One compute instance (one MIG device) inside a ``MigDevice``'s GPU instance."""

    profile: str  # canonical CI profile name, e.g. "1c.3g.20gb"
    uuid: str | None = None  # MIG device UUID, where it exists
    ci_id: int | None = None
    start: int | None = None  # compute-slice start inside the GI, where it exists


@dataclass(frozen=True, order=True)
class MigDevice:
    """One GPU instance at a placement with its compute instances.

    ``profile`` is the shape name (``planner.packing.shape_name``): for one
    compute instance its canonical MIG device name (``1c.3g.20gb``,
    ``3g.20gb``), for several ``GI[cis=…]`` with CI sizes largest first
    (``3g.20gb[cis=2c,1c]``, as nvidia-mig-parted packs ``2c.3g.20gb: 1,
    1c.3g.20gb: 1``). A GI without CIs is ``3g.20gb[cis=]``, which no target
    equals. ``cis`` lists the CIs (creation order for planned devices); it
    may be empty for a device built by hand with one CI named by ``profile``.
    """

    placement: Placement
    profile: str
    uuid: str | None = None  # MIG device UUID of a single-CI device, where it exists
    gi_id: int | None = None  # backend's GPU-instance id, where it exists
    cis: tuple[MigCi, ...] = ()

    @property
    def uuids(self) -> tuple[str, ...]:
        """Every compute instance's MIG device UUID that exists."""
        found = tuple(c.uuid for c in self.cis if c.uuid)
        if not found and self.uuid:
            return (self.uuid,)
        return found


@dataclass(frozen=True)
class GiAdjust:
    """An existing GPU instance kept in place whose compute instances change:
    ``destroy`` goes, the CIs named in ``create`` are added (in that order),
    the others keep their UUIDs. ``target`` is the GI as planned."""

    current: MigDevice
    target: MigDevice
    destroy: tuple[MigCi, ...]
    create: tuple[str, ...]  # canonical CI profile names, creation order

    @property
    def kept_uuids(self) -> tuple[str, ...]:
        gone = {c.ci_id for c in self.destroy}
        return tuple(c.uuid for c in self.current.cis if c.uuid and c.ci_id not in gone)


@dataclass(frozen=True)
class GpuPlan:
    """The minimal change for one GPU: destroy whole GPU instances, adjust the
    compute instances of kept ones, then create GPU instances."""

    keep: tuple[MigDevice, ...]
    destroy: tuple[MigDevice, ...]
    create: tuple[MigDevice, ...]  # every one with an explicit placement
    adjust: tuple[GiAdjust, ...] = ()

    @property
    def is_noop(self) -> bool:
        return not self.destroy and not self.create and not self.adjust

    @property
    def kept_uuids(self) -> tuple[str, ...]:
        """MIG device UUIDs that survive the plan (whole kept GIs and adjusted ones)."""
        return tuple(u for d in self.keep for u in d.uuids) + tuple(u for a in self.adjust for u in a.kept_uuids)

    @property
    def target(self) -> tuple[MigDevice, ...]:
        """Every GPU instance as the GPU will have it."""
        return (*self.keep, *(a.target for a in self.adjust), *self.create)


@dataclass(frozen=True)
class Infeasible:
    """The target cannot be laid out; ``reason`` says which resource runs out."""

    reason: str
