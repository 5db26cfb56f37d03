"""Which MIG devices serve a request, and which one-GPU layout changes make them: pure.

Order of decisions (docs/ondemand.md):

1. free existing instances (no process, no lease) that fit, smallest first;
   among equal sizes the policy's GPU order decides;
2. while more are needed: every GPU not changed yet by this request, with MIG
   on and a known model, is a candidate when some allowed geometry, taken in
   its list order, is reachable with every *pinned* instance (busy, leased,
   or handed out by this request) kept at its placement with its UUID, and
   adds a fitting free instance. Per GPU the first geometry that covers all
   that is still needed wins, else the first that covers the most. Among
   candidates binpack takes the busiest GPU (most memory slices pinned),
   spread the emptiest; ties go to the lower index.
3. nothing left to try: the request is refused, with the reason per GPU.

Nothing here reads or writes the node; ``serve`` executes the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from migmanagerd.catalog.model import GpuModel, Placement
from migmanagerd.ondemand.geometries import AllowedGeometries, Geometry
from migmanagerd.planner.placement import plan_gpu
from migmanagerd.planner.types import GpuPlan, MigDevice
from migmanagerd.spec.profile import MigProfile, ProfileNameError

BINPACK = "binpack"
SPREAD = "spread"
POLICIES = (BINPACK, SPREAD)


@dataclass(frozen=True)
class Request:
    count: int
    memory_mib: int | None = None  # each device offers at least this much
    profile: str | None = None  # canonical MIG device name, when asked for one
    policy: str = BINPACK

    def describe(self) -> str:
        what = []
        if self.profile:
            what.append(self.profile)
        if self.memory_mib is not None:
            what.append(f"{self.memory_mib} MiB")
        return f"{self.count} x {' '.join(what)}"


@dataclass(frozen=True)
class DeviceState:
    device: MigDevice
    busy: bool = False  # a process holds it
    lease: str | None = None  # owner of its lease


@dataclass(frozen=True)
class GpuState:
    index: int
    product_name: str  # NVML name, for HAMi's model match
    model: GpuModel | None
    mig_enabled: bool
    devices: tuple[DeviceState, ...] = ()


@dataclass(frozen=True)
class Handout:
    gpu: int
    profile: str
    placement: Placement
    memory_mib: int
    uuid: str | None  # None: created by the change, known after it


@dataclass(frozen=True)
class GpuChange:
    gpu: int
    geometry: Geometry
    plan: GpuPlan


@dataclass(frozen=True)
class Selection:
    handouts: tuple[Handout, ...]
    changes: tuple[GpuChange, ...]


@dataclass(frozen=True)
class Refusal:
    reason: str


def _fits(req: Request, profile: str, memory: int | None) -> bool:
    if req.profile is not None and profile != req.profile:
        return False
    return req.memory_mib is None or (memory is not None and memory >= req.memory_mib)


def _canonical(profile: str) -> bool:
    try:
        return str(MigProfile.parse(profile)) == profile
    except ProfileNameError:
        return False


def _pinned(gpu: GpuState, d: DeviceState, taken: set[tuple[int, int]]) -> bool:
    """Must stay where it is: busy, leased, handed out by this request, or a
    GPU instance that is not one MIG device (no compute instance, or several
    sharing it): what we do not hand out, we do not destroy."""
    return (
        d.busy or d.lease is not None or (gpu.index, d.device.placement.start) in taken
        or not _canonical(d.device.profile)
    )


def _pinned_slices(gpu: GpuState, taken: set[tuple[int, int]]) -> int:
    return sum(d.device.placement.size for d in gpu.devices if _pinned(gpu, d, taken))


def _gpu_order(policy: str, gpu: GpuState, taken: set[tuple[int, int]]) -> tuple[int, int]:
    used = _pinned_slices(gpu, taken)
    return (-used if policy == BINPACK else used, gpu.index)


MemoryOf = Callable[[GpuState, str], "int | None"]


def select(gpus: Sequence[GpuState], allowed: AllowedGeometries, req: Request) -> Selection | Refusal:
    if req.count < 1:
        return Refusal("a request needs --count of at least 1")
    if req.memory_mib is None and req.profile is None:
        return Refusal("a request needs --memory or --profile")

    def memory(gpu: GpuState, profile: str) -> int | None:
        return allowed.memory_mib(gpu.product_name, gpu.model, profile)

    handouts = _free_handouts(gpus, req, memory)
    taken = {(h.gpu, h.placement.start) for h in handouts}
    changes: list[GpuChange] = []
    why: dict[int, str] = {}
    while len(handouts) < req.count:
        need = req.count - len(handouts)
        best: tuple[tuple[int, int], GpuChange, list[Handout]] | None = None
        for gpu in gpus:
            if any(c.gpu == gpu.index for c in changes):
                continue
            found = _best_change(gpu, allowed, req, need, taken, memory, why)
            if found is None:
                continue
            key = _gpu_order(req.policy, gpu, taken)
            if best is None or key < best[0]:
                best = (key, found[0], found[1])
        if best is None:
            return Refusal(_refusal(req, len(handouts), gpus, why))
        changes.append(best[1])
        handouts.extend(best[2])
        taken |= {(h.gpu, h.placement.start) for h in best[2]}
    return Selection(tuple(handouts), tuple(changes))


def _free_handouts(gpus: Sequence[GpuState], req: Request, memory: MemoryOf) -> list[Handout]:
    """Free instances that fit, smallest first, the policy's GPU order among equals."""
    free: list[tuple[int, tuple[int, int], int, Handout]] = []
    for gpu in gpus:
        for d in gpu.devices:
            dev = d.device
            if d.busy or d.lease is not None or dev.uuid is None or not _canonical(dev.profile):
                continue
            mem = memory(gpu, dev.profile)
            if mem is None or not _fits(req, dev.profile, mem):
                continue
            h = Handout(gpu.index, dev.profile, dev.placement, mem, dev.uuid)
            free.append((mem, _gpu_order(req.policy, gpu, set()), dev.placement.start, h))
    free.sort(key=lambda t: (t[0], t[1], t[2]))
    return [t[3] for t in free[: req.count]]


def _unchangeable(gpu: GpuState) -> str | None:
    if gpu.model is None:
        return f"unknown model '{gpu.product_name}'"
    if not gpu.mig_enabled:
        return "MIG mode is disabled or pending a change (a request never switches the mode)"
    return None


def _best_change(
    gpu: GpuState, allowed: AllowedGeometries, req: Request, need: int,
    taken: set[tuple[int, int]], memory: MemoryOf, why: dict[int, str],
) -> tuple[GpuChange, list[Handout]] | None:
    """The first geometry (in list order) covering ``need``, else the one covering most."""
    reason = _unchangeable(gpu)
    geometries = allowed.for_gpu(gpu.product_name, gpu.model) if reason is None else ()
    if reason is None and not geometries:
        reason = "no allowed geometry for this model"
    if reason is not None or gpu.model is None:
        why[gpu.index] = reason or ""
        return None
    current = tuple(d.device for d in gpu.devices)
    pinned = tuple(d.device for d in gpu.devices if _pinned(gpu, d, taken))
    pinned_keys = {(d.placement.start, d.profile) for d in pinned}
    found: tuple[int, GpuChange, list[Handout]] | None = None
    for geometry in geometries:
        plan = reach(gpu.model, current, pinned, geometry)
        if plan is None:
            continue
        offered = []
        for dev in (*plan.keep, *plan.create):
            mem = memory(gpu, dev.profile)
            if (dev.placement.start, dev.profile) not in pinned_keys and _fits(req, dev.profile, mem):
                offered.append(Handout(gpu.index, dev.profile, dev.placement, mem or 0, dev.uuid))
        offered.sort(key=lambda h: (h.memory_mib, h.placement.start))
        cover = min(need, len(offered))
        if cover and (found is None or cover > found[0]):
            found = (cover, GpuChange(gpu.index, geometry, plan), offered[:cover])
            if cover == need:
                break
    if found is None:
        why[gpu.index] = (
            "no allowed geometry keeps its busy, leased and shared instances in place and adds a fitting one"
            if pinned else "no allowed geometry has a fitting instance"
        )
        return None
    return found[1], found[2]


def reach(model: GpuModel, current: Sequence[MigDevice], pinned: Sequence[MigDevice], geometry: Geometry) -> GpuPlan | None:
    """A plan to ``geometry`` that keeps every pinned device (placement and
    UUID), keeping as many other devices as it can; None when none exists."""
    def keeps_all(plan: GpuPlan) -> bool:
        kept = {(d.placement, d.profile, d.uuid) for d in plan.keep}
        return all((d.placement, d.profile, d.uuid) in kept for d in pinned)

    full = plan_gpu(model, current, geometry.target)
    if isinstance(full, GpuPlan) and keeps_all(full):
        return full
    only = plan_gpu(model, pinned, geometry.target)
    if not isinstance(only, GpuPlan) or not keeps_all(only):
        return None
    pinned_ids = {id(d) for d in pinned}
    destroy = tuple(d for d in current if id(d) not in pinned_ids)
    return GpuPlan(keep=only.keep, destroy=destroy, create=only.create)


def _refusal(req: Request, free: int, gpus: Sequence[GpuState], why: dict[int, str]) -> str:
    parts = [f"cannot serve {req.describe()}: {free} free instance(s) fit"]
    for gpu in gpus:
        if gpu.index in why:
            parts.append(f"GPU {gpu.index}: {why[gpu.index]}")
    return "; ".join(parts)
