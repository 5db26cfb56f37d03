"""The NVML C library's entry points as ctypes callbacks over a simulated node.

``StandinLibrary`` has one attribute per NVML symbol, each a
``ctypes.CFUNCTYPE`` callback: real nvidia-ml-py looks them up with
``getattr(nvmlLib, name)`` as it would on ``CDLL("libnvidia-ml.so.1")`` and
calls them with its own ctypes arguments (handles, structs by pointer,
buffers and counts), so its marshalling runs unchanged. Every answer comes
from the simulator's state file through ``SimBackend``: the MIG rules
(placements, counts, GI ids by placement, IN_USE, resets) are the
simulator's, in one place. What only NVML does is modelled here:

* every call but ``nvmlInit*``/``nvmlErrorString`` needs an open session
  (UNINITIALIZED); ``nvmlInit`` reference-counts and registers this process as
  an NVML client of the node (the stand-in ``nvidia-smi -r`` refuses while
  any is registered, as the real one does);
* versioned structs must carry a version the driver knows
  (ARGUMENT_VERSION_MISMATCH otherwise);
* GPU-instance profile info and placements are NOT_SUPPORTED while MIG is
  off, ``nvmlDeviceGetMaxMigDeviceCount`` is 0; selectors past the driver's
  profile count are INVALID_ARGUMENT (that is how the end is found);
* ``nvmlDeviceSetMigMode`` answers with an activation status (the change
  left pending): IN_USE while processes or other NVML clients hold the GPU,
  NOT_SUPPORTED where it cannot be reset;
* GPU instances also offer compute-instance profiles 7 (1 slice rev1) and 8
  (7 slice NVL) as recent drivers do; they list no instances here;
* handles are opaque pointers valid until the object is destroyed, the GPU
  reset or the last session shut down (INVALID_ARGUMENT afterwards);
* ``strict_count``: ``*count`` on input is the buffer's capacity, and a
  buffer too small is INSUFFICIENT_SIZE; without it, the driver writes every
  entry and ignores the input count, as drivers do (mig-parted's discovery
  code notes both readings).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterable
from ctypes import c_int, c_uint, c_void_p
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migmanagerd.catalog.model import GiProfile, GpuModel
from migmanagerd.gpu.backend import BackendError, GpuProcess
from migmanagerd.gpu.nvml_standin import codes as E
from migmanagerd.gpu.nvml_standin import structs as S
from migmanagerd.gpu.nvml_standin.clients import ClientRegistry
from migmanagerd.gpu.sim import SimBackend
from migmanagerd.gpu.sim_node import ModelCatalog
from migmanagerd.gpu.sim_state import SimGi, SimGpu, SimNode
from migmanagerd.log import get_logger

log = get_logger("gpu.nvml_standin")

MIG_DISABLE, MIG_ENABLE = 0, 1
# NVML_GPU_INSTANCE_PROFILE_COUNT of the driver the stand-in plays (R575+);
# nvidia-ml-py 12.x stops at 0xA, which is why callers must not use theirs.
DRIVER_GI_SELECTORS = 0x12
DRIVER_CI_PROFILES = 0x9
CI_1_SLICE_REV1, CI_7_SLICE_NVL = 7, 8
ENGINE_SHARED = 0
NOT_ON_MIG = 0xFFFFFFFF  # nvmlProcessInfo_t ids of a process not on a MIG device

_HANDLE_BASE = 0x5EED_0000
_HANDLE_STEP = 0x40


class NvmlReturn(Exception):
    """An NVML return code, raised inside a callback and returned from it."""

    def __init__(self, code: int, why: str = "") -> None:
        super().__init__(f"{E.NAMES.get(code, code)}: {why}")
        self.code = code


@dataclass(frozen=True)
class _Ref:
    kind: str  # "device", "gi", "ci" (a compute instance or a MIG device: same identity)
    gpu: int
    gi: int = -1
    key: str = ""  # GI: "profile@start"; CI: the MIG device UUID


def _backend_code(exc: BackendError) -> int:
    return E.VALUES.get(exc.code, E.UNKNOWN)


def _out(ptr: int | None, ctype: Any) -> Any:
    if not ptr:
        raise NvmlReturn(E.INVALID_ARGUMENT, "NULL output pointer")
    return ctype.from_address(ptr)


_VP = c_void_p
_PROTOS: dict[str, tuple[Any, ...]] = {
    # name: argument types (all return nvmlReturn_t)
    "nvmlInit_v2": (),
    "nvmlInitWithFlags": (c_uint,),
    "nvmlShutdown": (),
    "nvmlSystemGetDriverVersion": (_VP, c_uint),
    "nvmlSystemGetNVMLVersion": (_VP, c_uint),
    "nvmlDeviceGetCount_v2": (_VP,),
    "nvmlDeviceGetHandleByIndex_v2": (c_uint, _VP),
    "nvmlDeviceGetName": (_VP, _VP, c_uint),
    "nvmlDeviceGetUUID": (_VP, _VP, c_uint),
    "nvmlDeviceGetPciInfo_v3": (_VP, _VP),
    "nvmlDeviceGetMemoryInfo": (_VP, _VP),
    "nvmlDeviceGetMemoryInfo_v2": (_VP, _VP),
    "nvmlDeviceGetComputeRunningProcesses_v3": (_VP, _VP, _VP),
    "nvmlDeviceGetGraphicsRunningProcesses_v3": (_VP, _VP, _VP),
    "nvmlDeviceGetComputeRunningProcesses_v2": (_VP, _VP, _VP),
    "nvmlDeviceGetGraphicsRunningProcesses_v2": (_VP, _VP, _VP),
    "nvmlDeviceGetMigMode": (_VP, _VP, _VP),
    "nvmlDeviceSetMigMode": (_VP, c_uint, _VP),
    "nvmlDeviceGetGpuInstanceProfileInfo": (_VP, c_uint, _VP),
    "nvmlDeviceGetGpuInstanceProfileInfoV": (_VP, c_uint, _VP),
    "nvmlDeviceGetGpuInstancePossiblePlacements_v2": (_VP, c_uint, _VP, _VP),
    "nvmlDeviceCreateGpuInstanceWithPlacement": (_VP, c_uint, _VP, _VP),
    "nvmlDeviceGetGpuInstances": (_VP, c_uint, _VP, _VP),
    "nvmlDeviceGetGpuInstanceById": (_VP, c_uint, _VP),
    "nvmlGpuInstanceGetInfo": (_VP, _VP),
    "nvmlGpuInstanceDestroy": (_VP,),
    "nvmlGpuInstanceGetComputeInstanceProfileInfo": (_VP, c_uint, c_uint, _VP),
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV": (_VP, c_uint, c_uint, _VP),
    "nvmlGpuInstanceCreateComputeInstance": (_VP, c_uint, _VP),
    "nvmlGpuInstanceGetComputeInstances": (_VP, c_uint, _VP, _VP),
    "nvmlGpuInstanceGetComputeInstanceById": (_VP, c_uint, _VP),
    "nvmlComputeInstanceGetInfo_v2": (_VP, _VP),
    "nvmlComputeInstanceDestroy": (_VP,),
    "nvmlDeviceGetMaxMigDeviceCount": (_VP, _VP),
    "nvmlDeviceGetMigDeviceHandleByIndex": (_VP, c_uint, _VP),
    "nvmlDeviceGetGpuInstanceId": (_VP, _VP),
    "nvmlDeviceGetComputeInstanceId": (_VP, _VP),
    "nvmlDeviceIsMigDeviceHandle": (_VP, _VP),
}
SYMBOLS = (*_PROTOS, "nvmlErrorString")
_NO_SESSION = ("nvmlInit_v2", "nvmlInitWithFlags", "nvmlErrorString")

DRIVER_VERSION = b"575.57.08"
NVML_VERSION = b"12.575.57.08"


class StandinLibrary:
    """``pynvml.nvmlLib`` for a simulated node's state file (see the module doc)."""

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        *,
        strict_count: bool = False,
        missing: Iterable[str] = (),
        busy_gpus: Iterable[int] = (),
        catalog: ModelCatalog | None = None,
    ) -> None:
        self.state_path = Path(state_path)
        self.strict_count = strict_count
        self.busy_gpus = frozenset(busy_gpus)  # activation answers IN_USE (a monitoring agent held it)
        self.calls: list[str] = []  # symbol names, in call order (tests read it)
        self._catalog = catalog
        self._sim: SimBackend | None = None
        self._clients = ClientRegistry(self.state_path)
        self._lock = threading.RLock()
        self._sessions = 0
        self._handles: dict[int, _Ref] = {}
        self._issued = 0  # handles are never reused: a stale one stays stale
        self._by_ref: dict[_Ref, int] = {}
        self._strings: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self._failures: dict[str, list[int]] = {}  # symbol -> codes to answer next (fail())
        skip = set(missing)
        for name, argtypes in _PROTOS.items():
            if name not in skip:
                proto = ctypes.CFUNCTYPE(c_int, *argtypes)
                setattr(self, name, proto(self._entry(name, getattr(self, "_" + name))))
        if "nvmlErrorString" not in skip:
            self.nvmlErrorString = ctypes.CFUNCTYPE(c_void_p, c_int)(self._error_string)

    def fail(self, name: str, code: int, times: int = 1) -> None:
        """Answer the next ``times`` calls of symbol ``name`` with ``code``,
        changing nothing: errors a simulated node cannot produce (GPU_IS_LOST,
        NO_PERMISSION) reach the caller through pynvml as a driver's would."""
        if name not in _PROTOS:
            raise ValueError(f"the stand-in has no symbol {name}")
        self._failures.setdefault(name, []).extend([code] * times)

    # -- plumbing --------------------------------------------------------------

    def _entry(self, name: str, fn: Callable[..., None]) -> Callable[..., int]:
        def call(*args: Any) -> int:
            self.calls.append(name)
            try:
                with self._lock:
                    if name not in _NO_SESSION and self._sessions == 0:
                        raise NvmlReturn(E.UNINITIALIZED, "nvmlInit was not called")
                    queued = self._failures.get(name)
                    if queued:
                        raise NvmlReturn(queued.pop(0), "injected by fail()")
                # Not under the lock: calls on different GPUs overlap, as in
                # NVML (the simulator serialises what it must itself).
                fn(*args)
                return E.SUCCESS
            except NvmlReturn as exc:
                return exc.code
            except BackendError as exc:
                return _backend_code(exc)
            except Exception:  # a bug here must not become SUCCESS in C: log it, answer UNKNOWN
                log.exception("NVML stand-in: %s failed", name)
                return E.UNKNOWN

        return call

    def _error_string(self, code: int) -> int:
        buf = self._strings.get(code)
        if buf is None:
            buf = self._strings[code] = ctypes.create_string_buffer(E.STRINGS.get(code, "Unknown Error").encode())
        return ctypes.addressof(buf)

    @property
    def sim(self) -> SimBackend:
        if self._sim is None:
            self._sim = SimBackend(self.state_path, catalog=self._catalog)
        return self._sim

    def _node(self) -> SimNode:
        return self.sim.snapshot()

    def _handle_for(self, ref: _Ref) -> int:
        with self._lock:
            h = self._by_ref.get(ref)
            if h is None:
                self._issued += 1
                h = _HANDLE_BASE + _HANDLE_STEP * self._issued
                self._handles[h] = ref
                self._by_ref[ref] = h
            return h

    def _ref(self, handle: int | None, *kinds: str) -> _Ref:
        with self._lock:
            ref = self._handles.get(handle or 0)
        if ref is None or ref.kind not in kinds:
            raise NvmlReturn(E.INVALID_ARGUMENT, f"not a {'/'.join(kinds)} handle")
        return ref

    def _device(self, handle: int | None) -> tuple[SimNode, SimGpu]:
        ref = self._ref(handle, "device")
        node = self._node()
        gpu = node.gpu(ref.gpu)
        if gpu is None:
            raise NvmlReturn(E.INVALID_ARGUMENT, "stale device handle")
        return node, gpu

    def _model(self, gpu: SimGpu) -> GpuModel:
        model = self.sim.model_of(gpu.index)
        if model is None:
            raise NvmlReturn(E.NOT_SUPPORTED, f"{gpu.name} has no MIG")
        return model

    def _mig_on(self, gpu: SimGpu) -> GpuModel:
        model = self._model(gpu)
        if not gpu.mig_current:
            raise NvmlReturn(E.NOT_SUPPORTED, "MIG mode is disabled")
        return model

    def _gi(self, handle: int | None) -> tuple[SimGpu, SimGi, GpuModel]:
        ref = self._ref(handle, "gi")
        gpu = self._node().gpu(ref.gpu)
        gi = next((g for g in gpu.instances if g.id == ref.gi), None) if gpu else None
        if gpu is None or gi is None or f"{gi.profile_id}@{gi.start}" != ref.key:
            raise NvmlReturn(E.INVALID_ARGUMENT, "stale GPU instance handle")
        return gpu, gi, self._model(gpu)

    def _gi_handle(self, gpu: SimGpu, gi: SimGi) -> int:
        return self._handle_for(_Ref("gi", gpu.index, gi.id, f"{gi.profile_id}@{gi.start}"))

    def _ci(self, handle: int | None) -> tuple[SimGpu, SimGi, Any]:
        ref = self._ref(handle, "ci")
        gpu = self._node().gpu(ref.gpu)
        gi = next((g for g in gpu.instances if g.id == ref.gi), None) if gpu else None
        ci = next((c for c in gi.cis if c.uuid == ref.key), None) if gi else None
        if gpu is None or gi is None or ci is None:
            raise NvmlReturn(E.INVALID_ARGUMENT, "stale compute instance handle")
        return gpu, gi, ci

    def _fill_list(self, handles: list[int], buf: int | None, count_ptr: int | None) -> None:
        """Write handles to an array of pointers under the count protocol."""
        count = _out(count_ptr, c_uint)
        if not buf:
            count.value = len(handles)
            if handles:
                raise NvmlReturn(E.INSUFFICIENT_SIZE, "NULL buffer")
            return
        if self.strict_count and count.value < len(handles):
            count.value = len(handles)
            raise NvmlReturn(E.INSUFFICIENT_SIZE, f"*count is {count.value}, {len(handles)} needed")
        arr = (c_void_p * max(len(handles), 1)).from_address(buf)
        for i, h in enumerate(handles):
            arr[i] = h
        count.value = len(handles)

    @staticmethod
    def _check_version(version: int, known: dict[int, type[ctypes.Structure]]) -> type[ctypes.Structure]:
        struct = known.get(version)
        if struct is None:
            raise NvmlReturn(E.ARGUMENT_VERSION_MISMATCH, f"struct version 0x{version:08X} not one of {[hex(v) for v in known]}")
        return struct

    # -- library ---------------------------------------------------------------

    def _nvmlInit_v2(self) -> None:
        self._nvmlInitWithFlags(0)

    def _nvmlInitWithFlags(self, _flags: int) -> None:
        with self._lock:
            if self._sessions == 0:
                self._clients.register()
            self._sessions += 1

    def _nvmlShutdown(self) -> None:
        with self._lock:
            self._sessions -= 1
            if self._sessions == 0:
                self._clients.unregister()
                self._handles.clear()  # every handle dies with the last session
                self._by_ref.clear()

    @property
    def sessions(self) -> int:
        return self._sessions

    def _nvmlSystemGetDriverVersion(self, buf: int | None, length: int) -> None:
        self._text(buf, length, DRIVER_VERSION)

    def _nvmlSystemGetNVMLVersion(self, buf: int | None, length: int) -> None:
        self._text(buf, length, NVML_VERSION)

    @staticmethod
    def _text(buf: int | None, length: int, value: bytes) -> None:
        if not buf:
            raise NvmlReturn(E.INVALID_ARGUMENT, "NULL buffer")
        if length < len(value) + 1:
            raise NvmlReturn(E.INSUFFICIENT_SIZE, f"{length} bytes for {len(value) + 1}")
        ctypes.memmove(buf, value + b"\0", len(value) + 1)

    # -- devices ---------------------------------------------------------------

    def _nvmlDeviceGetCount_v2(self, out: int | None) -> None:
        _out(out, c_uint).value = len(self._node().gpus)

    def _nvmlDeviceGetHandleByIndex_v2(self, index: int, out: int | None) -> None:
        if self._node().gpu(index) is None:
            raise NvmlReturn(E.INVALID_ARGUMENT, f"no GPU {index}")
        _out(out, c_void_p).value = self._handle_for(_Ref("device", index))

    def _nvmlDeviceGetName(self, h: int | None, buf: int | None, length: int) -> None:
        _, gpu = self._device(h)
        self._text(buf, length, gpu.name.encode())

    def _nvmlDeviceGetUUID(self, h: int | None, buf: int | None, length: int) -> None:
        ref = self._ref(h, "device", "ci")
        if ref.kind == "ci":
            _, _, ci = self._ci(h)
            self._text(buf, length, ci.uuid.encode())
        else:
            _, gpu = self._device(h)
            self._text(buf, length, gpu.uuid.encode())

    def _nvmlDeviceGetPciInfo_v3(self, h: int | None, out: int | None) -> None:
        _, gpu = self._device(h)
        info = _out(out, S.PciInfo)
        bus = gpu.pci_bus_id.encode()
        info.busId = bus
        info.busIdLegacy = bus[-12:]
        domain, bus_no, rest = gpu.pci_bus_id.split(":")
        info.domain, info.bus, info.device = int(domain, 16), int(bus_no, 16), int(rest.split(".")[0], 16)
        info.pciDeviceId = gpu.pci_device_id
        info.pciSubSystemId = gpu.pci_subsystem_id

    def _nvmlDeviceGetMemoryInfo(self, h: int | None, out: int | None) -> None:
        _, gpu = self._device(h)
        mem = _out(out, S.Memory)
        mem.total = mem.free = gpu.memory_mib * 1024 * 1024
        mem.used = 0

    def _nvmlDeviceGetMemoryInfo_v2(self, h: int | None, out: int | None) -> None:
        _, gpu = self._device(h)
        self._check_version(_out(out, c_uint).value, {S.MEMORY_V2: S.MemoryV2})
        mem = _out(out, S.MemoryV2)
        mem.total = mem.free = gpu.memory_mib * 1024 * 1024
        mem.used = mem.reserved = 0

    def _processes(self, procs: list[GpuProcess], count_ptr: int | None, buf: int | None) -> None:
        count = _out(count_ptr, c_uint)
        if not buf or count.value < len(procs):
            # both readings agree here: NVML reports the size it needs
            count.value = len(procs)
            if procs:
                raise NvmlReturn(E.INSUFFICIENT_SIZE, f"{len(procs)} processes")
            return
        arr = (S.ProcessInfo * max(len(procs), 1)).from_address(buf)
        for i, p in enumerate(procs):
            arr[i].pid, arr[i].usedGpuMemory = p.pid, 0
            # the MIG device it runs on; 0xFFFFFFFF when on the whole GPU
            arr[i].gpuInstanceId = NOT_ON_MIG if p.gi_id is None else p.gi_id
            arr[i].computeInstanceId = NOT_ON_MIG if p.ci_id is None else p.ci_id
        count.value = len(procs)

    def _nvmlDeviceGetComputeRunningProcesses_v3(self, h: int | None, count: int | None, buf: int | None) -> None:
        _, gpu = self._device(h)
        self._processes(list(self.sim.processes(gpu.index)), count, buf)

    def _nvmlDeviceGetGraphicsRunningProcesses_v3(self, h: int | None, count: int | None, buf: int | None) -> None:
        self._device(h)
        self._processes([], count, buf)  # the simulator's processes are compute contexts

    # nvmlProcessInfo_v2_t and _v3's calls fill the same struct
    _nvmlDeviceGetComputeRunningProcesses_v2 = _nvmlDeviceGetComputeRunningProcesses_v3
    _nvmlDeviceGetGraphicsRunningProcesses_v2 = _nvmlDeviceGetGraphicsRunningProcesses_v3

    # -- MIG mode ----------------------------------------------------------------

    def _nvmlDeviceGetMigMode(self, h: int | None, cur: int | None, pend: int | None) -> None:
        _, gpu = self._device(h)
        self._model(gpu)
        _out(cur, c_uint).value = MIG_ENABLE if gpu.mig_current else MIG_DISABLE
        _out(pend, c_uint).value = MIG_ENABLE if gpu.mig_pending else MIG_DISABLE

    def _nvmlDeviceSetMigMode(self, h: int | None, mode: int, status_ptr: int | None) -> None:
        _, gpu = self._device(h)
        status = _out(status_ptr, c_uint)
        if mode not in (MIG_ENABLE, MIG_DISABLE):
            raise NvmlReturn(E.INVALID_ARGUMENT, f"mode {mode}")
        busy = gpu.index in self.busy_gpus or bool(self._clients.others())
        answer = self.sim.request_mig_mode(gpu.index, mode == MIG_ENABLE, busy=busy)
        status.value = E.VALUES[answer]
        self._forget(gpu.index)  # handles of a GPU do not survive a mode change

    def _forget(self, index: int) -> None:
        with self._lock:
            for h, ref in list(self._handles.items()):
                if ref.gpu == index and ref.kind != "device":
                    del self._handles[h]
                    del self._by_ref[ref]

    # -- GPU instances -----------------------------------------------------------

    def _gi_profile(self, h: int | None, selector: int) -> GiProfile:
        _, gpu = self._device(h)
        if selector >= DRIVER_GI_SELECTORS:
            raise NvmlReturn(E.INVALID_ARGUMENT, f"selector {selector}")
        model = self._mig_on(gpu)  # the V call is NOT_SUPPORTED with MIG off
        profile = next((p for p in model.gi_profiles if p.selector == selector), None)
        if profile is None:
            raise NvmlReturn(E.NOT_SUPPORTED, f"{model.name} has no profile for selector {selector}")
        return profile

    @staticmethod
    def _fill_gi_info(info: Any, p: GiProfile) -> None:
        info.id = p.nvml_id
        info.sliceCount = p.compute_slices
        info.instanceCount = p.max_count
        info.multiprocessorCount = p.sm_count or 0
        info.memorySizeMB = p.memory_mib

    def _nvmlDeviceGetGpuInstanceProfileInfo(self, h: int | None, selector: int, out: int | None) -> None:
        p = self._gi_profile(h, selector)
        self._fill_gi_info(_out(out, S.GiProfileInfoV1), p)

    def _nvmlDeviceGetGpuInstanceProfileInfoV(self, h: int | None, selector: int, out: int | None) -> None:
        struct = self._check_version(_out(out, c_uint).value, {S.GI_PROFILE_INFO_V2: S.GiProfileInfoV2, S.GI_PROFILE_INFO_V3: S.GiProfileInfoV3})
        p = self._gi_profile(h, selector)
        info = _out(out, struct)
        self._fill_gi_info(info, p)
        info.name = f"MIG {p.name}".encode()[: S.NVML_DEVICE_NAME_V2_BUFFER_SIZE - 1]

    def _profile_by_id(self, gpu: SimGpu, profile_id: int) -> tuple[GpuModel, GiProfile]:
        model = self._mig_on(gpu)
        p = model.gi_profile_by_id(profile_id)
        if p is None:
            raise NvmlReturn(E.INVALID_ARGUMENT, f"no GI profile id {profile_id}")
        return model, p

    def _nvmlDeviceGetGpuInstancePossiblePlacements_v2(self, h: int | None, profile_id: int, buf: int | None, count_ptr: int | None) -> None:
        _, gpu = self._device(h)
        _, p = self._profile_by_id(gpu, profile_id)
        count = _out(count_ptr, c_uint)
        n = len(p.placements)
        if not buf:
            count.value = n
            return
        if self.strict_count and count.value < n:
            count.value = n
            raise NvmlReturn(E.INSUFFICIENT_SIZE, f"{n} placements")
        arr = (S.Placement * max(n, 1)).from_address(buf)
        for i, start in enumerate(p.placements):
            arr[i].start, arr[i].size = start, p.memory_slices
        count.value = n

    def _nvmlDeviceCreateGpuInstanceWithPlacement(self, h: int | None, profile_id: int, placement: int | None, out: int | None) -> None:
        _, gpu = self._device(h)
        _, p = self._profile_by_id(gpu, profile_id)
        pl = _out(placement, S.Placement)
        if pl.size != p.memory_slices:
            raise NvmlReturn(E.INVALID_ARGUMENT, f"placement size {pl.size} is not {p.memory_slices}")
        made = self.sim.create_gpu_instance(gpu.index, profile_id, int(pl.start))
        _out(out, c_void_p).value = self._handle_for(_Ref("gi", gpu.index, made.id, f"{made.profile_id}@{made.start}"))

    def _nvmlDeviceGetGpuInstances(self, h: int | None, profile_id: int, buf: int | None, count_ptr: int | None) -> None:
        _, gpu = self._device(h)
        self._profile_by_id(gpu, profile_id)
        mine = sorted((g for g in gpu.instances if g.profile_id == profile_id), key=lambda g: g.id)
        self._fill_list([self._gi_handle(gpu, g) for g in mine], buf, count_ptr)

    def _nvmlDeviceGetGpuInstanceById(self, h: int | None, gi_id: int, out: int | None) -> None:
        _, gpu = self._device(h)
        self._mig_on(gpu)
        gi = next((g for g in gpu.instances if g.id == gi_id), None)
        if gi is None:
            raise NvmlReturn(E.NOT_FOUND, f"no GPU instance {gi_id}")
        _out(out, c_void_p).value = self._gi_handle(gpu, gi)

    def _nvmlGpuInstanceGetInfo(self, h: int | None, out: int | None) -> None:
        gpu, gi, _ = self._gi(h)
        info = _out(out, S.GpuInstanceInfo)
        info.device = self._handle_for(_Ref("device", gpu.index))
        info.id, info.profileId = gi.id, gi.profile_id
        info.placement.start, info.placement.size = gi.start, gi.size

    def _nvmlGpuInstanceDestroy(self, h: int | None) -> None:
        gpu, gi, _ = self._gi(h)
        self.sim.destroy_gpu_instance(gpu.index, gi.id)

    # -- compute instances -------------------------------------------------------

    def _ci_offer(self, model: GpuModel, gi: SimGi, enum: int) -> tuple[int, int]:
        """(slice count, instance count) of CI profile ``enum`` in this GI."""
        if enum >= DRIVER_CI_PROFILES:
            raise NvmlReturn(E.INVALID_ARGUMENT, f"CI profile {enum}")
        gip = model.gi_profile_by_id(gi.profile_id)
        if gip is None:
            raise NvmlReturn(E.NOT_SUPPORTED, "unknown GI profile")
        cip = next((c for c in gip.ci_profiles if c.nvml_id == enum), None)
        if cip is not None:
            return cip.compute_slices, cip.max_count
        if enum == CI_1_SLICE_REV1:
            return 1, gip.compute_slices
        if enum == CI_7_SLICE_NVL and gip.compute_slices == 7:
            return 7, 1
        raise NvmlReturn(E.NOT_SUPPORTED, f"GI profile {gi.profile_id} has no CI profile {enum}")

    def _ci_profile(self, h: int | None, enum: int, engine: int, info: Any) -> None:
        gpu, gi, model = self._gi(h)
        if engine != ENGINE_SHARED:
            raise NvmlReturn(E.INVALID_ARGUMENT, f"engine profile {engine}")
        slices, count = self._ci_offer(model, gi, enum)
        info.id, info.sliceCount, info.instanceCount = enum, slices, count

    def _nvmlGpuInstanceGetComputeInstanceProfileInfo(self, h: int | None, enum: int, engine: int, out: int | None) -> None:
        self._ci_profile(h, enum, engine, _out(out, S.CiProfileInfoV1))

    def _nvmlGpuInstanceGetComputeInstanceProfileInfoV(self, h: int | None, enum: int, engine: int, out: int | None) -> None:
        struct = self._check_version(_out(out, c_uint).value, {S.CI_PROFILE_INFO_V2: S.CiProfileInfoV2, S.CI_PROFILE_INFO_V3: S.CiProfileInfoV3})
        self._ci_profile(h, enum, engine, _out(out, struct))

    def _ci_handle(self, gpu: SimGpu, gi: SimGi, uuid: str) -> int:
        return self._handle_for(_Ref("ci", gpu.index, gi.id, uuid))

    def _nvmlGpuInstanceCreateComputeInstance(self, h: int | None, profile_id: int, out: int | None) -> None:
        gpu, gi, model = self._gi(h)
        self._ci_offer(model, gi, profile_id)  # 7/8 are listed; the simulator refuses to create them
        made = self.sim.create_compute_instance(gpu.index, gi.id, profile_id)
        _out(out, c_void_p).value = self._ci_handle(gpu, gi, made.uuid)

    def _nvmlGpuInstanceGetComputeInstances(self, h: int | None, profile_id: int, buf: int | None, count_ptr: int | None) -> None:
        gpu, gi, model = self._gi(h)
        self._ci_offer(model, gi, profile_id)
        mine = sorted((c for c in gi.cis if c.profile_id == profile_id), key=lambda c: c.id)
        self._fill_list([self._ci_handle(gpu, gi, c.uuid) for c in mine], buf, count_ptr)

    def _nvmlGpuInstanceGetComputeInstanceById(self, h: int | None, ci_id: int, out: int | None) -> None:
        gpu, gi, _ = self._gi(h)
        ci = next((c for c in gi.cis if c.id == ci_id), None)
        if ci is None:
            raise NvmlReturn(E.NOT_FOUND, f"no compute instance {ci_id}")
        _out(out, c_void_p).value = self._ci_handle(gpu, gi, ci.uuid)

    def _nvmlComputeInstanceGetInfo_v2(self, h: int | None, out: int | None) -> None:
        gpu, gi, ci = self._ci(h)
        info = _out(out, S.ComputeInstanceInfo)
        info.device = self._handle_for(_Ref("device", gpu.index))
        info.gpuInstance = self._gi_handle(gpu, gi)
        info.id, info.profileId = ci.id, ci.profile_id
        info.placement.start, info.placement.size = ci.start, ci.size

    def _nvmlComputeInstanceDestroy(self, h: int | None) -> None:
        gpu, gi, ci = self._ci(h)
        self.sim.destroy_compute_instance(gpu.index, gi.id, ci.id)

    # -- MIG devices -------------------------------------------------------------

    def _nvmlDeviceGetMaxMigDeviceCount(self, h: int | None, out: int | None) -> None:
        _, gpu = self._device(h)
        model = self.sim.model_of(gpu.index)
        _out(out, c_uint).value = model.compute_slices if model is not None and gpu.mig_current else 0

    def _nvmlDeviceGetMigDeviceHandleByIndex(self, h: int | None, index: int, out: int | None) -> None:
        _, gpu = self._device(h)
        model = self._mig_on(gpu)
        if index >= model.compute_slices:
            raise NvmlReturn(E.INVALID_ARGUMENT, f"MIG device index {index}")
        devices = [(gi, ci) for gi in sorted(gpu.instances, key=lambda g: g.id) for ci in sorted(gi.cis, key=lambda c: c.id)]
        if index >= len(devices):
            raise NvmlReturn(E.NOT_FOUND, f"no MIG device {index}")
        gi, ci = devices[index]
        _out(out, c_void_p).value = self._ci_handle(gpu, gi, ci.uuid)

    def _nvmlDeviceGetGpuInstanceId(self, h: int | None, out: int | None) -> None:
        _, gi, _ = self._ci(h)
        _out(out, c_uint).value = gi.id

    def _nvmlDeviceGetComputeInstanceId(self, h: int | None, out: int | None) -> None:
        _, _, ci = self._ci(h)
        _out(out, c_uint).value = ci.id

    def _nvmlDeviceIsMigDeviceHandle(self, h: int | None, out: int | None) -> None:
        ref = self._ref(h, "device", "ci")
        _out(out, c_uint).value = 1 if ref.kind == "ci" else 0

