"""What the planner takes and returns. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from migmanagerd.catalog.model import Placement


@dataclass(frozen=True, order=True)
class MigDevice:
    """One MIG device: a GPU instance at a placement holding one compute instance.

    ``profile`` is the canonical MIG device name (``str(MigProfile)``, e.g.
    ``1c.3g.20gb`` or ``3g.20gb``). An existing GPU instance that is not in that
    one-CI shape (no CI, several CIs) carries a profile string that no target
    can equal, e.g. ``3g.20gb[cis=1c,1c]``, so the planner replaces it.
    """

    placement: Placement
    profile: str
    uuid: str | None = None  # MIG device UUID, where it exists
    gi_id: int | None = None  # backend's GPU-instance id, where it exists


@dataclass(frozen=True)
class GpuPlan:
    """The minimal change for one GPU: destroy first, then create."""

    keep: tuple[MigDevice, ...]
    destroy: tuple[MigDevice, ...]
    create: tuple[MigDevice, ...]  # every one with an explicit placement

    @property
    def is_noop(self) -> bool:
        return not self.destroy and not self.create


@dataclass(frozen=True)
class Infeasible:
    """The target cannot be laid out; ``reason`` says which resource runs out."""

    reason: str
