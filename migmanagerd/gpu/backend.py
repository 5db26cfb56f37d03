"""The one interface through which migmanagerd touches GPUs.

Two implementations: ``nvml`` (nvidia-ml-py, real nodes) and ``sim`` (a
simulated node that obeys the same rules). Profiles are NVML device profile
ids (``GiProfile.nvml_id``) and CI profile enum values, placements are memory
slices, exactly as NVML has them; mapping to names is the catalog's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from migmanagerd.errors import MigManagerError


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str  # NVML product name, e.g. "NVIDIA A100-SXM4-40GB"
    pci_device_id: int  # 32-bit 0xDDDDVVVV, as nvidia-mig-parted's device-filter
    pci_subsystem_id: int  # 32-bit 0xSSSSVVVV
    pci_bus_id: str  # e.g. "00000000:07:00.0"
    memory_mib: int
    mig_capable: bool


@dataclass(frozen=True)
class MigMode:
    current: bool
    pending: bool


@dataclass(frozen=True)
class ComputeInstance:
    id: int
    profile_id: int  # NVML_COMPUTE_INSTANCE_PROFILE_* value
    start: int  # compute-slice placement inside the GPU instance
    size: int
    uuid: str  # the MIG device UUID ("MIG-…")


@dataclass(frozen=True)
class GpuInstance:
    id: int
    profile_id: int  # device GI profile id (GiProfile.nvml_id)
    start: int  # memory-slice placement
    size: int
    compute_instances: tuple[ComputeInstance, ...] = ()


@dataclass(frozen=True)
class GpuProcess:
    """A process holding a GPU (compute or graphics context)."""

    gpu_index: int
    pid: int
    used_memory_mib: int | None = None
    # the MIG device it runs on (NVML's gpuInstanceId/computeInstanceId); None: not on one
    gi_id: int | None = None
    ci_id: int | None = None


class BackendError(MigManagerError):
    """A backend operation failed. Names the GPU, the action and the cause.

    ``code`` is the NVML error name (``INSUFFICIENT_RESOURCES``, ``IN_USE``…),
    which the simulator uses too, so callers can branch on it.
    """

    def __init__(self, gpu_index: int | None, action: str, code: str, detail: str = "") -> None:
        self.gpu_index = gpu_index
        self.action = action
        self.code = code
        self.detail = detail
        where = f"GPU {gpu_index}: " if gpu_index is not None else ""
        tail = f" ({detail})" if detail else ""
        super().__init__(f"{where}{action} failed: {code}{tail}")


class Backend(Protocol):
    """Operations on one node's GPUs. Implementations are used from several
    threads at once, one per GPU index; they must be safe for that."""

    name: str

    def gpus(self) -> Sequence[GpuInfo]: ...

    def mig_mode(self, index: int) -> MigMode: ...

    def set_mig_mode(self, index: int, enabled: bool) -> None:
        """Request a mode; it stays pending until reset/reboot where hardware says so."""

    def gpu_instances(self, index: int) -> Sequence[GpuInstance]: ...

    def create_gpu_instance(self, index: int, profile_id: int, start: int) -> GpuInstance: ...

    def create_compute_instance(self, index: int, gi_id: int, ci_profile_id: int) -> ComputeInstance: ...

    def destroy_compute_instance(self, index: int, gi_id: int, ci_id: int) -> None: ...

    def destroy_gpu_instance(self, index: int, gi_id: int) -> None: ...

    def reset_available(self, index: int) -> bool:
        """False where the GPU cannot be reset (passthrough VM): a reboot is needed."""

    def reset(self, indices: Sequence[int]) -> None: ...

    def processes(self, index: int) -> Sequence[GpuProcess]: ...

    def close(self) -> None: ...
