"""Read the node's GPUs through a backend into planner vocabulary.

The planner compares MIG devices by canonical profile name and placement; this
module is where NVML's numeric GI/CI profile ids become those names. A GPU
instance counts as a MIG device of a profile only when it holds exactly one
compute instance (nvidia-mig-parted's meaning of ``"PROFILE": N``); any other
shape gets a name no target can equal, so the planner replaces it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from migmanagerd.catalog.model import GiProfile, GpuModel, Placement
from migmanagerd.gpu.backend import Backend, GpuInfo, GpuInstance, MigMode
from migmanagerd.planner.types import MigDevice

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


def device_profile(model: GpuModel | None, gi: GpuInstance) -> str:
    """The canonical MIG device name of ``gi``, or a name no target can equal."""
    gi_name, gi_profile = _gi_name(model, gi.profile_id)
    cis = gi.compute_instances
    if len(cis) == 1 and gi_profile is not None:
        for ci in gi_profile.ci_profiles:
            if ci.nvml_id == cis[0].profile_id:
                return ci.name
    labels = ",".join(_ci_short(gi_profile, ci.profile_id) for ci in cis)
    return f"{gi_name}[cis={labels}]"


def to_mig_device(model: GpuModel | None, gi: GpuInstance) -> MigDevice:
    cis = gi.compute_instances
    uuid = cis[0].uuid if len(cis) == 1 else None
    return MigDevice(
        placement=Placement(gi.start, gi.size),
        profile=device_profile(model, gi),
        uuid=uuid,
        gi_id=gi.id,
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
