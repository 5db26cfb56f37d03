"""Read the node's GPUs through a backend into planner vocabulary.

The planner compares MIG devices by canonical profile name and placement; this
module is where NVML's numeric GI/CI profile ids become those names. Each GPU
instance becomes one ``MigDevice`` named by its shape: the CI's name when it
holds one compute instance, ``GI[cis=2c,1c]`` when it holds several (the way
nvidia-mig-parted packs CIs, see planner.packing), ``GI[cis=]`` when it holds
none; a CI profile the catalog does not know gets a label no target equals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from migmanagerd.catalog.model import CiProfile, GiProfile, GpuModel, Placement
from migmanagerd.gpu.backend import Backend, ComputeInstance, GpuInfo, GpuInstance, MigMode
from migmanagerd.planner.packing import shape_name
from migmanagerd.planner.types import MigCi, MigDevice

ModelLookup = Callable[[GpuInfo], "GpuModel | None"]


@dataclass(frozen=True)
class GpuView:
    """One GPU as observed: identity, catalog model, MIG mode and MIG devices.

    ``instances`` keeps the backend's raw GI/CI records so a rollback can
    recreate exactly what it destroyed, whatever its shape.
    """

    info: GpuInfo
    model: GpuModel | None
    mode: MigMode
    devices: tuple[MigDevice, ...]
    instances: tuple[GpuInstance, ...] = ()

    @property
    def index(self) -> int:
        return self.info.index

    @property
    def model_name(self) -> str:
        return self.model.name if self.model is not None else self.info.name

    @property
    def mig_capable(self) -> bool:
        return self.info.mig_capable

    def instance(self, gi_id: int) -> GpuInstance | None:
        for gi in self.instances:
            if gi.id == gi_id:
                return gi
        return None


@dataclass(frozen=True)
class NodeState:
    gpus: tuple[GpuView, ...]

    def gpu(self, index: int) -> GpuView:
        for view in self.gpus:
            if view.index == index:
                return view
        raise KeyError(index)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(v.index for v in self.gpus)


def _gi_name(model: GpuModel | None, profile_id: int) -> tuple[str, GiProfile | None]:
    gi_profile = model.gi_profile_by_id(profile_id) if model is not None else None
    if gi_profile is None:
        return f"gi-profile-{profile_id}", None
    return gi_profile.name, gi_profile


def _ci_short(gi_profile: GiProfile | None, ci_profile_id: int) -> str:
    """``1c``-style CI label used inside non-canonical names."""
    if gi_profile is not None:
        for ci in gi_profile.ci_profiles:
            if ci.nvml_id == ci_profile_id:
                return f"{ci.compute_slices}c"
    return f"ci-profile-{ci_profile_id}"


def _ci_profile(gi_profile: GiProfile | None, ci: ComputeInstance) -> CiProfile | None:
    if gi_profile is None:
        return None
    return next((c for c in gi_profile.ci_profiles if c.nvml_id == ci.profile_id), None)


def ci_profile_name(model: GpuModel | None, gi: GpuInstance, ci: ComputeInstance) -> str:
    """The canonical name of one compute instance (one MIG device), e.g. ``1c.3g.20gb``."""
    gi_name, gi_profile = _gi_name(model, gi.profile_id)
    known = _ci_profile(gi_profile, ci)
    return known.name if known is not None else f"{gi_name}[ci-profile-{ci.profile_id}]"


def device_profile(model: GpuModel | None, gi: GpuInstance) -> str:
    """The shape name of ``gi`` (see the module doc)."""
    gi_name, gi_profile = _gi_name(model, gi.profile_id)
    cis = [_ci_profile(gi_profile, ci) for ci in gi.compute_instances]
    if gi_profile is not None and all(c is not None for c in cis):
        return shape_name(gi_profile, [c for c in cis if c is not None])
    labels = ",".join(_ci_short(gi_profile, ci.profile_id) for ci in gi.compute_instances)
    return f"{gi_name}[cis={labels}]"


def to_mig_device(model: GpuModel | None, gi: GpuInstance) -> MigDevice:
    cis = gi.compute_instances
    uuid = cis[0].uuid if len(cis) == 1 else None
    return MigDevice(
        placement=Placement(gi.start, gi.size),
        profile=device_profile(model, gi),
        uuid=uuid,
        gi_id=gi.id,
        cis=tuple(MigCi(ci_profile_name(model, gi, ci), ci.uuid, ci.id, ci.start) for ci in cis),
    )


def observe_gpu(backend: Backend, info: GpuInfo, model: GpuModel | None) -> GpuView:
    if not info.mig_capable:
        return GpuView(info, model, MigMode(False, False), ())
    mode = backend.mig_mode(info.index)
    # NVML lists instances only while MIG is on (NOT_SUPPORTED otherwise).
    instances: tuple[GpuInstance, ...] = ()
    if mode.current:
        instances = tuple(sorted(backend.gpu_instances(info.index), key=lambda gi: (gi.start, gi.id)))
    devices = tuple(to_mig_device(model, gi) for gi in instances)
    return GpuView(info, model, mode, devices, instances)


def observe_node(backend: Backend, lookup: ModelLookup) -> NodeState:
    infos: Sequence[GpuInfo] = sorted(backend.gpus(), key=lambda i: i.index)
    return NodeState(tuple(observe_gpu(backend, info, lookup(info)) for info in infos))
