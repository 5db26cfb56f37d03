"""A strict stand-in for the ``pynvml`` module (nvidia-ml-py), for tests.

It keeps a node's MIG state and answers the NVML calls the backend makes with
NVML's semantics and error values, taken from the real ``pynvml`` module:

* every call needs ``nvmlInit`` first (UNINITIALIZED otherwise);
* handles are real ctypes pointers, valid only when this fake issued them
  (device handles only from ``nvmlDeviceGetHandleByIndex``); a destroyed GPU
  or compute instance's handle is INVALID_ARGUMENT afterwards;
* MIG mode changes stay pending until ``reset_gpu`` on models that need a
  reset; GPU-instance calls with MIG off are NOT_SUPPORTED;
* placements must be legal (INVALID_ARGUMENT) and free (INSUFFICIENT_RESOURCES);
  instance counts are enforced; a GI holding CIs is IN_USE on destroy;
* only the calls below exist: anything else (``nvmlDeviceCreateGpuInstance``,
  driver-chosen placement, say) is an AttributeError, so the backend cannot
  use it unnoticed.

Every call is recorded in ``calls`` as ``(name, args)``. Install it with
``mocker.patch.dict(sys.modules, {"pynvml": fake})``.
"""

from __future__ import annotations

import ctypes
import uuid as uuidlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml as _real

from migmanagerd.catalog.model import GiProfile, GpuModel

NVMLError = _real.NVMLError


def _err(value: int) -> _real.NVMLError:
    return _real.NVMLError(value)


@dataclass
class FakeCi:
    id: int
    enum: int
    start: int
    size: int
    uuid: str


@dataclass
class FakeGi:
    id: int
    profile: GiProfile
    start: int
    cis: dict[int, FakeCi] = field(default_factory=dict)


@dataclass
class FakeGpu:
    index: int
    model: GpuModel | None
    name: str
    uuid: str
    pci_device_id: int
    bus_id: str
    memory_mib: int
    mig_current: bool = False
    mig_pending: bool = False
    gis: dict[int, FakeGi] = field(default_factory=dict)
    compute_procs: list[tuple[int, int | None]] = field(default_factory=list)
    graphics_procs: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass(frozen=True)
class _Ref:
    kind: str  # "device", "gi", "ci", "mig"
    gpu: int
    gi: int = -1
    ci: int = -1


class FakeNvml:
    """Looks like the ``pynvml`` module; state lives in ``gpus``."""

    NVMLError = _real.NVMLError

    def __init__(self, models: list[GpuModel | None], *, bus_ids: list[str] | None = None) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.init_count = 0
        self.shutdown_count = 0
        self._initialized = 0
        self.activation_status = _real.NVML_SUCCESS
        self._failures: dict[str, list[int]] = {}
        self._cells: list[ctypes.c_uint64] = []
        self._refs: dict[int, _Ref] = {}
        self._device_handles: dict[int, Any] = {}
        self.gpus: list[FakeGpu] = []
        for i, m in enumerate(models):
            self.gpus.append(
                FakeGpu(
                    index=i,
                    model=m,
                    name=m.product_names[0] if m else "NVIDIA DGX Display",
                    uuid=f"GPU-{uuidlib.uuid5(uuidlib.NAMESPACE_OID, f'fake-{i}')}",
                    pci_device_id=m.pci_ids[0] if m else 0x1FB010DE,
                    bus_id=(bus_ids[i] if bus_ids else f"00000000:{0x07 + 8 * i:02X}:00.0"),
                    memory_mib=m.memory_mib if m else 4096,
                )
            )

    # -- test controls (not NVML) --------------------------------------------

    def fail(self, name: str, value: int, times: int = 1) -> None:
        """Make the next ``times`` calls of ``name`` raise NVMLError(value)."""
        self._failures.setdefault(name, []).extend([value] * times)

    def reset_gpu(self, index: int) -> None:
        gpu = self.gpus[index]
        gpu.mig_current = gpu.mig_pending
        self._drop_instances(gpu)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    # -- plumbing ------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Constants, structs and error classes are the real module's; an
        # NVML *function* this fake does not implement does not exist.
        if name.startswith(("NVML_", "c_nvml", "nvmlPciInfo", "NVMLError")):
            return getattr(_real, name)
        raise AttributeError(f"fake pynvml: {name} is not implemented (the backend must not need it)")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {n for n in dir(_real) if n.startswith(("NVML_", "c_nvml", "NVMLError"))})

    def _enter(self, name: str, args: tuple, *, needs_init: bool = True) -> None:
        self.calls.append((name, args))
        if needs_init and self._initialized == 0:
            raise _err(_real.NVML_ERROR_UNINITIALIZED)
        queued = self._failures.get(name)
        if queued:
            raise _err(queued.pop(0))

    def _handle(self, ptr_type: Any, ref: _Ref) -> Any:
        cell = ctypes.c_uint64(len(self._cells) + 1)
        self._cells.append(cell)
        self._refs[ctypes.addressof(cell)] = ref
        return ctypes.cast(ctypes.pointer(cell), ptr_type)

    def _ref(self, handle: Any, *kinds: str) -> _Ref:
        if not isinstance(handle, ctypes._Pointer):
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        ref = self._refs.get(ctypes.cast(handle, ctypes.c_void_p).value or 0)
        if ref is None or ref.kind not in kinds:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return ref

    def _device(self, handle: Any) -> FakeGpu:
        return self.gpus[self._ref(handle, "device").gpu]

    def _gi(self, handle: Any) -> tuple[FakeGpu, FakeGi]:
        ref = self._ref(handle, "gi")
        gpu = self.gpus[ref.gpu]
        gi = gpu.gis.get(ref.gi)
        if gi is None:  # destroyed: the handle is stale
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu, gi

    def _mig_model(self, gpu: FakeGpu) -> GpuModel:
        if gpu.model is None:
            raise _err(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.model

    def _mig_on(self, gpu: FakeGpu) -> GpuModel:
        model = self._mig_model(gpu)
        if not gpu.mig_current:
            raise _err(_real.NVML_ERROR_NOT_SUPPORTED)
        return model

    def _drop_instances(self, gpu: FakeGpu) -> None:
        gpu.gis.clear()
        for addr, ref in list(self._refs.items()):
            if ref.gpu == gpu.index and ref.kind in ("gi", "ci", "mig"):
                del self._refs[addr]

    @staticmethod
    def _count_ref(count_ref: Any) -> ctypes.c_uint:
        obj = getattr(count_ref, "_obj", None)  # ctypes.byref(...)
        if obj is None and isinstance(count_ref, ctypes._Pointer):
            obj = count_ref.contents
        if not isinstance(obj, ctypes.c_uint):
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return obj

    # -- library -------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._enter("nvmlInit", (), needs_init=False)
        self.init_count += 1
        self._initialized += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown", ())
        self.shutdown_count += 1
        self._initialized -= 1

    # -- devices -------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount", ())
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter("nvmlDeviceGetHandleByIndex", (index,))
        if not 0 <= index < len(self.gpus):
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        if index not in self._device_handles:
            self._device_handles[index] = self._handle(_real.c_nvmlDevice_t, _Ref("device", index))
        return self._device_handles[index]

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetName", (handle,))
        return self._device(handle).name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetUUID", (handle,))
        ref = self._ref(handle, "device", "mig")
        gpu = self.gpus[ref.gpu]
        if ref.kind == "device":
            return gpu.uuid
        gi = gpu.gis.get(ref.gi)
        ci = gi.cis.get(ref.ci) if gi else None
        if ci is None:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return ci.uuid

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        self._enter("nvmlDeviceGetPciInfo", (handle,))
        gpu = self._device(handle)
        info = _real.nvmlPciInfo_t()
        info.pciDeviceId = gpu.pci_device_id
        info.pciSubSystemId = 0x145F10DE
        info.busId = gpu.bus_id.encode()
        info.busIdLegacy = gpu.bus_id.encode()
        return info

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        self._enter("nvmlDeviceGetMemoryInfo", (handle,))
        gpu = self._device(handle)
        mem = _real.c_nvmlMemory_t()
        mem.total = gpu.memory_mib * 1024 * 1024
        mem.free = mem.total
        mem.used = 0
        return mem

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list:
        self._enter("nvmlDeviceGetComputeRunningProcesses", (handle,))
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._device(handle).compute_procs]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list:
        self._enter("nvmlDeviceGetGraphicsRunningProcesses", (handle,))
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._device(handle).graphics_procs]

    # -- MIG mode ------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        self._enter("nvmlDeviceGetMigMode", (handle,))
        gpu = self._device(handle)
        self._mig_model(gpu)
        on, off = _real.NVML_DEVICE_MIG_ENABLE, _real.NVML_DEVICE_MIG_DISABLE
        return [on if gpu.mig_current else off, on if gpu.mig_pending else off]

    def nvmlDeviceSetMigMode(self, handle: Any, mode: int) -> int:
        self._enter("nvmlDeviceSetMigMode", (handle, mode))
        gpu = self._device(handle)
        model = self._mig_model(gpu)
        if mode not in (_real.NVML_DEVICE_MIG_ENABLE, _real.NVML_DEVICE_MIG_DISABLE):
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        enable = mode == _real.NVML_DEVICE_MIG_ENABLE
        if not enable and gpu.gis:
            raise _err(_real.NVML_ERROR_IN_USE)
        gpu.mig_pending = enable
        if gpu.compute_procs or gpu.graphics_procs:
            return _real.NVML_ERROR_IN_USE  # pending: the GPU is busy
        if not model.mig_mode_needs_reset:
            gpu.mig_current = enable
        return self.activation_status

    # -- GPU instances -------------------------------------------------------

    def nvmlDeviceGetGpuInstanceProfileInfo(self, handle: Any, profile: int, version: int = 2) -> Any:
        self._enter("nvmlDeviceGetGpuInstanceProfileInfo", (handle, profile, version))
        gpu = self._device(handle)
        if not 0 <= profile < _real.NVML_GPU_INSTANCE_PROFILE_COUNT:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        model = self._mig_model(gpu)
        p = next((p for p in model.gi_profiles if p.selector == profile), None)
        if p is None:
            raise _err(_real.NVML_ERROR_NOT_SUPPORTED)
        info = _real.c_nvmlGpuInstanceProfileInfo_v2_t() if version == 2 else _real.c_nvmlGpuInstanceProfileInfo_t()
        info.id = p.nvml_id
        info.sliceCount = p.compute_slices
        info.instanceCount = p.max_count
        info.memorySizeMB = p.memory_mib
        info.multiprocessorCount = p.sm_count or 0
        return info

    def _profile(self, model: GpuModel, profile_id: int) -> GiProfile:
        p = model.gi_profile_by_id(profile_id)
        if p is None:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return p

    def nvmlDeviceGetGpuInstancePossiblePlacements(self, handle: Any, profileId: int, placementsRef: Any, countRef: Any) -> int:
        self._enter("nvmlDeviceGetGpuInstancePossiblePlacements", (handle, profileId, placementsRef is not None))
        gpu = self._device(handle)
        p = self._profile(self._mig_model(gpu), profileId)
        count = self._count_ref(countRef)
        if placementsRef is None:
            count.value = len(p.placements)
            return _real.NVML_SUCCESS
        if len(placementsRef) < len(p.placements) or count.value < len(p.placements):
            count.value = len(p.placements)
            raise _err(_real.NVML_ERROR_INSUFFICIENT_SIZE)
        for i, start in enumerate(p.placements):
            placementsRef[i].start = start
            placementsRef[i].size = p.memory_slices
        count.value = len(p.placements)
        return _real.NVML_SUCCESS

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, handle: Any, profileId: int, placement: Any) -> Any:
        self._enter("nvmlDeviceCreateGpuInstanceWithPlacement", (handle, profileId, placement))
        gpu = self._device(handle)
        model = self._mig_on(gpu)
        p = self._profile(model, profileId)
        pl = getattr(placement, "_obj", None)
        if not isinstance(pl, _real.c_nvmlGpuInstancePlacement_t):
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)  # must be passed by reference
        if pl.start not in p.placements or pl.size != p.memory_slices:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        if sum(1 for g in gpu.gis.values() if g.profile.nvml_id == profileId) >= p.max_count:
            raise _err(_real.NVML_ERROR_INSUFFICIENT_RESOURCES)
        new = p.placement(pl.start)
        if any(new.overlaps(g.profile.placement(g.start)) for g in gpu.gis.values()):
            raise _err(_real.NVML_ERROR_INSUFFICIENT_RESOURCES)
        if sum(g.profile.compute_slices for g in gpu.gis.values()) + p.compute_slices > model.compute_slices:
            raise _err(_real.NVML_ERROR_INSUFFICIENT_RESOURCES)
        gi_id = 0 if p.compute_slices == model.compute_slices else min(set(range(1, 64)) - set(gpu.gis))
        gpu.gis[gi_id] = FakeGi(gi_id, p, pl.start)
        return self._handle(_real.c_nvmlGpuInstance_t, _Ref("gi", gpu.index, gi_id))

    def nvmlDeviceGetGpuInstances(self, handle: Any, profileId: int, gpuInstancesRef: Any, countRef: Any) -> int:
        self._enter("nvmlDeviceGetGpuInstances", (handle, profileId))
        gpu = self._device(handle)
        p = self._profile(self._mig_on(gpu), profileId)
        count = self._count_ref(countRef)
        mine = sorted((g for g in gpu.gis.values() if g.profile.nvml_id == p.nvml_id), key=lambda g: g.id)
        if len(gpuInstancesRef) < len(mine):
            raise _err(_real.NVML_ERROR_INSUFFICIENT_SIZE)
        for i, g in enumerate(mine):
            gpuInstancesRef[i] = self._handle(_real.c_nvmlGpuInstance_t, _Ref("gi", gpu.index, g.id))
        count.value = len(mine)
        return _real.NVML_SUCCESS

    def nvmlDeviceGetGpuInstanceById(self, handle: Any, gpuInstanceId: int) -> Any:
        self._enter("nvmlDeviceGetGpuInstanceById", (handle, gpuInstanceId))
        gpu = self._device(handle)
        self._mig_on(gpu)
        if gpuInstanceId not in gpu.gis:
            raise _err(_real.NVML_ERROR_NOT_FOUND)
        return self._handle(_real.c_nvmlGpuInstance_t, _Ref("gi", gpu.index, gpuInstanceId))

    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> Any:
        self._enter("nvmlGpuInstanceGetInfo", (gpuInstance,))
        _, gi = self._gi(gpuInstance)
        info = _real.c_nvmlGpuInstanceInfo_t()
        info.id = gi.id
        info.profileId = gi.profile.nvml_id
        info.placement.start = gi.start
        info.placement.size = gi.profile.memory_slices
        return info

    def nvmlGpuInstanceDestroy(self, gpuInstance: Any) -> int:
        self._enter("nvmlGpuInstanceDestroy", (gpuInstance,))
        gpu, gi = self._gi(gpuInstance)
        if gi.cis:
            raise _err(_real.NVML_ERROR_IN_USE)
        del gpu.gis[gi.id]
        return _real.NVML_SUCCESS

    # -- compute instances ---------------------------------------------------

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(self, gpuInstance: Any, profile: int, engProfile: int, version: int = 2) -> Any:
        self._enter("nvmlGpuInstanceGetComputeInstanceProfileInfo", (gpuInstance, profile, engProfile))
        _, gi = self._gi(gpuInstance)
        if not 0 <= profile < _real.NVML_COMPUTE_INSTANCE_PROFILE_COUNT or engProfile != _real.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        cp = next((c for c in gi.profile.ci_profiles if c.nvml_id == profile), None)
        if cp is None:
            raise _err(_real.NVML_ERROR_NOT_SUPPORTED)
        info = _real.c_nvmlComputeInstanceProfileInfo_v2_t() if version == 2 else _real.c_nvmlComputeInstanceProfileInfo_t()
        info.id = cp.nvml_id
        info.sliceCount = cp.compute_slices
        info.instanceCount = cp.max_count
        return info

    def nvmlGpuInstanceCreateComputeInstance(self, gpuInstance: Any, profileId: int) -> Any:
        self._enter("nvmlGpuInstanceCreateComputeInstance", (gpuInstance, profileId))
        gpu, gi = self._gi(gpuInstance)
        cp = next((c for c in gi.profile.ci_profiles if c.nvml_id == profileId), None)
        if cp is None:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        if sum(1 for c in gi.cis.values() if c.enum == profileId) >= cp.max_count:
            raise _err(_real.NVML_ERROR_INSUFFICIENT_RESOURCES)
        taken = 0
        for c in gi.cis.values():
            taken |= ((1 << c.size) - 1) << c.start
        starts = cp.placements or tuple(range(0, gi.profile.compute_slices - cp.compute_slices + 1))
        for s in starts:
            if not (((1 << cp.compute_slices) - 1) << s) & taken and s + cp.compute_slices <= gi.profile.compute_slices:
                break
        else:
            raise _err(_real.NVML_ERROR_INSUFFICIENT_RESOURCES)
        ci_id = min(set(range(0, 64)) - set(gi.cis))
        gi.cis[ci_id] = FakeCi(ci_id, profileId, s, cp.compute_slices, f"MIG-{uuidlib.uuid4()}")
        return self._handle(_real.c_nvmlComputeInstance_t, _Ref("ci", gpu.index, gi.id, ci_id))

    def _ci(self, handle: Any) -> tuple[FakeGpu, FakeGi, FakeCi]:
        ref = self._ref(handle, "ci")
        gpu = self.gpus[ref.gpu]
        gi = gpu.gis.get(ref.gi)
        ci = gi.cis.get(ref.ci) if gi else None
        if gi is None or ci is None:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu, gi, ci

    def nvmlGpuInstanceGetComputeInstances(self, gpuInstance: Any, profileId: int, computeInstancesRef: Any, countRef: Any) -> int:
        self._enter("nvmlGpuInstanceGetComputeInstances", (gpuInstance, profileId))
        gpu, gi = self._gi(gpuInstance)
        count = self._count_ref(countRef)
        mine = sorted((c for c in gi.cis.values() if c.enum == profileId), key=lambda c: c.id)
        if len(computeInstancesRef) < len(mine):
            raise _err(_real.NVML_ERROR_INSUFFICIENT_SIZE)
        for i, c in enumerate(mine):
            computeInstancesRef[i] = self._handle(_real.c_nvmlComputeInstance_t, _Ref("ci", gpu.index, gi.id, c.id))
        count.value = len(mine)
        return _real.NVML_SUCCESS

    def nvmlGpuInstanceGetComputeInstanceById(self, gpuInstance: Any, computeInstanceId: int) -> Any:
        self._enter("nvmlGpuInstanceGetComputeInstanceById", (gpuInstance, computeInstanceId))
        gpu, gi = self._gi(gpuInstance)
        if computeInstanceId not in gi.cis:
            raise _err(_real.NVML_ERROR_NOT_FOUND)
        return self._handle(_real.c_nvmlComputeInstance_t, _Ref("ci", gpu.index, gi.id, computeInstanceId))

    def nvmlComputeInstanceGetInfo(self, computeInstance: Any) -> Any:
        self._enter("nvmlComputeInstanceGetInfo", (computeInstance,))
        _, gi, ci = self._ci(computeInstance)
        info = _real.c_nvmlComputeInstanceInfo_t()
        info.id = ci.id
        info.profileId = ci.enum
        info.placement.start = ci.start
        info.placement.size = ci.size
        return info

    def nvmlComputeInstanceDestroy(self, computeInstance: Any) -> int:
        self._enter("nvmlComputeInstanceDestroy", (computeInstance,))
        _, gi, ci = self._ci(computeInstance)
        del gi.cis[ci.id]
        return _real.NVML_SUCCESS

    # -- MIG devices ---------------------------------------------------------

    def _mig_devices(self, gpu: FakeGpu) -> list[tuple[int, int]]:
        return [(g.id, c.id) for g in sorted(gpu.gis.values(), key=lambda g: g.id) for c in sorted(g.cis.values(), key=lambda c: c.id)]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetMaxMigDeviceCount", (handle,))
        return self._mig_model(self._device(handle)).compute_slices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any:
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex", (handle, index))
        gpu = self._device(handle)
        model = self._mig_on(gpu)
        if not 0 <= index < model.compute_slices:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        devices = self._mig_devices(gpu)
        if index >= len(devices):
            raise _err(_real.NVML_ERROR_NOT_FOUND)
        gi, ci = devices[index]
        return self._handle(_real.c_nvmlDevice_t, _Ref("mig", gpu.index, gi, ci))

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetGpuInstanceId", (handle,))
        return self._ref(handle, "mig").gi

    def nvmlDeviceGetComputeInstanceId(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetComputeInstanceId", (handle,))
        return self._ref(handle, "mig").ci


def install(mocker: Any, fake: FakeNvml) -> FakeNvml:
    """Put ``fake`` where ``import pynvml`` finds it, for this test only."""
    import sys

    mocker.patch.dict(sys.modules, {"pynvml": fake})
    return fake

