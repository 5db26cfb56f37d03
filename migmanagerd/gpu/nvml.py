"""The ``Backend`` protocol on real GPUs, through nvidia-ml-py (``pynvml``).

``pynvml`` is imported when the backend is opened, so importing this module
(e.g. for ``--help`` or the simulator) needs neither NVML nor a driver.

NVML facts used here (nvml.h; docs/mig-geometry.md, section 3):

* ``nvmlDeviceGetGpuInstanceProfileInfo`` takes a *selector*
  (``NVML_GPU_INSTANCE_PROFILE_*``) and returns the device *profile id*
  (``info.id``, nvidia-smi's "ID" column); placement and create calls take
  that id. We learn the map by asking every selector once per MIG mode.
* GPU instances are created with an explicit placement
  (``nvmlDeviceCreateGpuInstanceWithPlacement``) that was first checked
  against ``nvmlDeviceGetGpuInstancePossiblePlacements``: never by trial.
* ``nvmlDeviceSetMigMode`` returns an activation status (``IN_USE`` when
  processes or monitoring agents hold the GPU, ``NOT_SUPPORTED`` or
  ``RESET_REQUIRED`` where it cannot be reset), and in every one of those the
  change is left *pending*. The status is only logged: the engine decides
  reset or reboot from ``mig_mode()`` and ``reset_available()``, as
  mig-parted does.
* Profiles are enumerated until NVML answers INVALID_ARGUMENT, never up to
  the bindings' ``*_PROFILE_COUNT`` (0xA in nvidia-ml-py 12.5xx, 0x12 in
  13.x: an old package would hide the newer profiles).
* Instance lists pass ``*count`` = the buffer's length, with headroom over
  the profile's instance count (A30 reports too few), which is right whether
  the driver reads ``*count`` as capacity or ignores it.
* A reset runs with NVML shut down in this process (nvidia-smi refuses while
  any NVML client is open), all GPUs in one ``nvidia-smi -r -i BUS,BUS`` call
  (NVLink-connected GPUs must go together), then NVML is initialised again.
* Handles become invalid on reset, so none is kept across operations.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from migmanagerd.gpu.backend import (
    BackendError,
    ComputeInstance,
    GpuInfo,
    GpuInstance,
    GpuProcess,
    MigMode,
)
from migmanagerd.log import get_logger

log = get_logger("gpu.nvml")

DEFAULT_RESET_TIMEOUT_S = 120.0
NVIDIA_SMI_ENV = "MIGMANAGERD_NVIDIA_SMI"  # the nvidia-smi used for resets
# Bounds on "ask until INVALID_ARGUMENT" so a driver that never says so cannot loop us.
MAX_GI_SELECTORS = 256
MAX_CI_PROFILES = 64
LIST_HEADROOM = 8

# One nvmlInit per process, however many backends are opened; the last
# close() shuts NVML down (NVML itself reference-counts nvmlInit the same way).
_INIT_LOCK = threading.Lock()
_INIT_COUNTS: dict[int, int] = {}  # id(bindings module) -> open backends


@dataclass(frozen=True)
class GiProfileInfo:
    """What NVML says about one GPU-instance profile of one GPU."""

    selector: int
    id: int
    slice_count: int
    instance_count: int
    memory_mib: int


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _detail(exc: Exception) -> str:
    """NVML's own text, unless it only repeats the code (no library to ask)."""
    text = str(exc)
    return "" if text.startswith("NVML Error with code") else text


def pci_sysfs_name(bus_id: str) -> str:
    """NVML's ``00000000:07:00.0`` -> sysfs's ``0000:07:00.0`` (4-digit domain, lower case)."""
    text = bus_id.strip().lower()
    domain, sep, rest = text.partition(":")
    if not sep:
        return text
    return f"{int(domain, 16) & 0xFFFF:04x}:{rest}"


def _mig_ids(proc: object) -> tuple[int | None, int | None]:
    """The MIG device a process runs on: nvmlProcessInfo_t's gpuInstanceId and
    computeInstanceId (0xFFFFFFFF, or absent in old structs, when not on one)."""
    ids = []
    for name in ("gpuInstanceId", "computeInstanceId"):
        value = getattr(proc, name, None)
        ids.append(int(value) if isinstance(value, int) and value != 0xFFFFFFFF else None)
    return ids[0], ids[1]


class NvmlBackend:
    """Real GPUs. Safe for one thread per GPU: NVML calls are thread-safe, and
    each GPU's multi-call sequences run under that GPU's lock."""

    name = "nvml"

    def __init__(
        self,
        *,
        sysfs_root: str | os.PathLike[str] = "/sys",
        nvidia_smi: str | Sequence[str] | None = None,
        reset_timeout_s: float = DEFAULT_RESET_TIMEOUT_S,
        nvml: ModuleType | None = None,
    ) -> None:
        if nvml is None:
            try:
                import pynvml  # nvidia-ml-py; late so the sim never needs it
            except ImportError as exc:
                raise BackendError(None, "load NVML bindings", "LIBRARY_NOT_FOUND", f"nvidia-ml-py is not installed: {exc}") from None
            nvml = pynvml
        self._nv: Any = nvml  # untyped bindings
        self._sysfs_root = Path(sysfs_root)
        if nvidia_smi is None:
            nvidia_smi = os.environ.get(NVIDIA_SMI_ENV) or "nvidia-smi"
        self._nvidia_smi: tuple[str, ...] = (nvidia_smi,) if isinstance(nvidia_smi, str) else tuple(nvidia_smi)
        self._reset_timeout_s = reset_timeout_s
        self._lock = threading.Lock()
        self._gpu_locks: dict[int, threading.RLock] = {}
        self._profiles: dict[int, dict[int, GiProfileInfo]] = {}
        self._closed = False
        self._names = self._error_names(nvml)
        with _INIT_LOCK:
            if _INIT_COUNTS.get(id(nvml), 0) == 0:
                with self._call(None, "initialise NVML"):
                    nvml.nvmlInit()
            _INIT_COUNTS[id(nvml)] = _INIT_COUNTS.get(id(nvml), 0) + 1

    # -- plumbing ------------------------------------------------------------

    @staticmethod
    def _error_names(nvml: Any) -> dict[int, str]:
        names: dict[int, str] = {}
        for attr in sorted(dir(nvml)):
            if attr.startswith("NVML_ERROR_"):
                value = getattr(nvml, attr)
                if isinstance(value, int):
                    names.setdefault(value, attr[len("NVML_ERROR_"):])
        return names

    def _code(self, value: int) -> str:
        return self._names.get(value, f"NVML_ERROR_{value}")

    @contextmanager
    def _call(self, index: int | None, action: str) -> Iterator[None]:
        """Turn an NVML error into a BackendError naming the GPU, action and code."""
        try:
            yield
        except self._nv.NVMLError as exc:
            value = getattr(exc, "value", None)
            code = self._code(value) if isinstance(value, int) else "UNKNOWN"
            raise BackendError(index, action, code, _detail(exc)) from None

    def _gpu_lock(self, index: int) -> threading.RLock:
        with self._lock:
            return self._gpu_locks.setdefault(index, threading.RLock())

    def _handle(self, index: int, action: str) -> Any:
        if self._closed:
            raise BackendError(index, action, "UNINITIALIZED", "the NVML backend was closed")
        with self._call(index, action):
            return self._nv.nvmlDeviceGetHandleByIndex(index)

    def _is(self, exc: Exception, *names: str) -> bool:
        return any(getattr(exc, "value", None) == getattr(self._nv, f"NVML_ERROR_{n}", object()) for n in names)

    # -- discovery -----------------------------------------------------------

    def gpus(self) -> Sequence[GpuInfo]:
        nv = self._nv
        with self._call(None, "count GPUs"):
            count = nv.nvmlDeviceGetCount()
        out = []
        for index in range(count):
            h = self._handle(index, "describe GPU")
            with self._call(index, "describe GPU"):
                name = _text(nv.nvmlDeviceGetName(h))
                uuid = _text(nv.nvmlDeviceGetUUID(h))
                pci = nv.nvmlDeviceGetPciInfo(h)
                memory = nv.nvmlDeviceGetMemoryInfo(h)
            out.append(
                GpuInfo(
                    index=index,
                    uuid=uuid,
                    name=name,
                    pci_device_id=int(pci.pciDeviceId),
                    pci_subsystem_id=int(pci.pciSubSystemId),
                    pci_bus_id=_text(pci.busId),
                    memory_mib=int(memory.total) // (1024 * 1024),
                    mig_capable=self._mig_capable(index, h),
                )
            )
        return tuple(out)

    def _mig_capable(self, index: int, handle: Any) -> bool:
        try:
            self._nv.nvmlDeviceGetMigMode(handle)
            return True
        except self._nv.NVMLError as exc:
            if self._is(exc, "NOT_SUPPORTED"):
                return False
            raise BackendError(index, "get MIG mode", self._code(exc.value), _detail(exc)) from None

    def mig_mode(self, index: int) -> MigMode:
        h = self._handle(index, "get MIG mode")
        try:
            current, pending = self._nv.nvmlDeviceGetMigMode(h)
        except self._nv.NVMLError as exc:
            if self._is(exc, "NOT_SUPPORTED"):
                return MigMode(False, False)  # a GPU without MIG: "off", as the simulator says
            raise BackendError(index, "get MIG mode", self._code(exc.value), _detail(exc)) from None
        on = self._nv.NVML_DEVICE_MIG_ENABLE
        return MigMode(current=current == on, pending=pending == on)

    def gi_profiles(self, index: int) -> dict[int, GiProfileInfo]:
        """Device profile id -> info, learned from every selector (cached per MIG mode)."""
        with self._gpu_lock(index):
            cached = self._profiles.get(index)
            if cached is not None:
                return cached
            nv = self._nv
            h = self._handle(index, "list GPU instance profiles")
            found: dict[int, GiProfileInfo] = {}
            for selector in range(MAX_GI_SELECTORS):
                try:
                    info = self._profile_info(h, selector)
                except nv.NVMLError as exc:
                    if self._is(exc, "INVALID_ARGUMENT"):
                        break  # past the driver's last selector (nvml.h)
                    if self._is(exc, "NOT_SUPPORTED"):
                        continue  # this GPU has no profile for that selector (or MIG is off)
                    raise BackendError(index, f"get GPU instance profile (selector {selector})", self._code(exc.value), _detail(exc)) from None
                found[int(info.id)] = GiProfileInfo(
                    selector=selector,
                    id=int(info.id),
                    slice_count=int(info.sliceCount),
                    instance_count=int(info.instanceCount),
                    memory_mib=int(info.memorySizeMB),
                )
            if found:  # nothing with MIG off: ask again once it is on
                self._profiles[index] = found
            return found

    def _profile_info(self, handle: Any, selector: int) -> Any:
        nv = self._nv
        try:
            return nv.nvmlDeviceGetGpuInstanceProfileInfo(handle, selector)
        except nv.NVMLError as exc:
            if self._is(exc, "FUNCTION_NOT_FOUND"):  # a driver without the V call
                return nv.nvmlDeviceGetGpuInstanceProfileInfo(handle, selector, version=1)
            raise

    def possible_placements(self, index: int, profile_id: int) -> tuple[tuple[int, int], ...]:
        """(start, size) pairs NVML allows for a device profile id."""
        nv = self._nv
        h = self._handle(index, "list placements")
        count = ctypes.c_uint(0)
        with self._call(index, f"list placements of GI profile {profile_id}"):
            nv.nvmlDeviceGetGpuInstancePossiblePlacements(h, profile_id, None, ctypes.byref(count))
            if count.value == 0:
                return ()
            buf = (nv.c_nvmlGpuInstancePlacement_t * count.value)()
            count.value = len(buf)
            nv.nvmlDeviceGetGpuInstancePossiblePlacements(h, profile_id, buf, ctypes.byref(count))
        return tuple((int(buf[i].start), int(buf[i].size)) for i in range(count.value))

    def _gi_handles(self, index: int, h: Any) -> list[Any]:
        nv = self._nv
        handles: list[Any] = []
        for pid, info in sorted(self.gi_profiles(index).items()):
            if info.instance_count == 0:
                continue
            buf = (nv.c_nvmlGpuInstance_t * (info.instance_count + LIST_HEADROOM))()
            count = ctypes.c_uint(len(buf))
            with self._call(index, f"list GPU instances of profile {pid}"):
                nv.nvmlDeviceGetGpuInstances(h, pid, buf, ctypes.byref(count))
            handles.extend(buf[i] for i in range(min(count.value, len(buf))))
        return handles

    def _ci_profile_map(self, index: int, gi: Any) -> dict[int, tuple[int, int]]:
        """CI profile id as the GI knows it -> (NVML_COMPUTE_INSTANCE_PROFILE_* value, instance count)."""
        nv = self._nv
        out: dict[int, tuple[int, int]] = {}
        for enum in range(MAX_CI_PROFILES):
            try:
                info = self._ci_profile_info(gi, enum)
            except nv.NVMLError as exc:
                if self._is(exc, "INVALID_ARGUMENT"):
                    break  # past the driver's last CI profile
                if self._is(exc, "NOT_SUPPORTED"):
                    continue
                raise BackendError(index, f"get compute instance profile {enum}", self._code(exc.value), _detail(exc)) from None
            # Recent drivers add profiles 7/8 beside the ordinary ones; the
            # first enum that names an id is the one instances are made with.
            out.setdefault(int(info.id), (enum, int(info.instanceCount)))
        return out

    def _ci_profile_info(self, gi: Any, enum: int) -> Any:
        nv = self._nv
        shared = nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
        try:
            return nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, enum, shared)
        except nv.NVMLError as exc:
            if self._is(exc, "FUNCTION_NOT_FOUND"):  # a driver without the V call
                return nv.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, enum, shared, version=1)
            raise

    def _mig_uuids(self, index: int, h: Any) -> dict[tuple[int, int], str]:
        """(GI id, CI id) -> MIG device UUID."""
        nv = self._nv
        out: dict[tuple[int, int], str] = {}
        with self._call(index, "count MIG devices"):
            n = nv.nvmlDeviceGetMaxMigDeviceCount(h)
        for i in range(n):
            try:
                mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
            except nv.NVMLError as exc:
                if self._is(exc, "NOT_FOUND", "INVALID_ARGUMENT"):
                    continue  # an empty slot
                raise BackendError(index, f"get MIG device {i}", self._code(exc.value), _detail(exc)) from None
            with self._call(index, f"describe MIG device {i}"):
                key = (int(nv.nvmlDeviceGetGpuInstanceId(mig)), int(nv.nvmlDeviceGetComputeInstanceId(mig)))
                out[key] = _text(nv.nvmlDeviceGetUUID(mig))
        return out

    def gpu_instances(self, index: int) -> Sequence[GpuInstance]:
        nv = self._nv
        with self._gpu_lock(index):
            if not self.mig_mode(index).current:
                return ()
            h = self._handle(index, "list GPU instances")
            uuids = self._mig_uuids(index, h)
            result = []
            for gi in self._gi_handles(index, h):
                with self._call(index, "describe GPU instance"):
                    info = nv.nvmlGpuInstanceGetInfo(gi)
                gi_id = int(info.id)
                cis = []
                for ci_pid, (enum, count) in sorted(self._ci_profile_map(index, gi).items()):
                    if count == 0:
                        continue
                    buf = (nv.c_nvmlComputeInstance_t * (count + LIST_HEADROOM))()
                    n = ctypes.c_uint(len(buf))
                    with self._call(index, f"list compute instances of GPU instance {gi_id}"):
                        nv.nvmlGpuInstanceGetComputeInstances(gi, ci_pid, buf, ctypes.byref(n))
                        for k in range(min(n.value, len(buf))):
                            ci = nv.nvmlComputeInstanceGetInfo(buf[k])
                            cis.append(
                                ComputeInstance(
                                    id=int(ci.id),
                                    profile_id=enum,
                                    start=int(ci.placement.start),
                                    size=int(ci.placement.size),
                                    uuid=uuids.get((gi_id, int(ci.id)), ""),
                                )
                            )
                result.append(
                    GpuInstance(
                        id=gi_id,
                        profile_id=int(info.profileId),
                        start=int(info.placement.start),
                        size=int(info.placement.size),
                        compute_instances=tuple(sorted(cis, key=lambda c: c.id)),
                    )
                )
            return tuple(sorted(result, key=lambda g: (g.start, g.id)))

    def processes(self, index: int) -> Sequence[GpuProcess]:
        h = self._handle(index, "list processes")
        seen: dict[int, GpuProcess] = {}
        for kind in ("Compute", "Graphics"):
            for p in self._process_list(index, h, kind):
                used = getattr(p, "usedGpuMemory", None)
                mib = int(used) // (1024 * 1024) if isinstance(used, int) else None
                seen.setdefault(int(p.pid), GpuProcess(index, int(p.pid), mib, *_mig_ids(p)))
        return tuple(seen[pid] for pid in sorted(seen))

    def _process_list(self, index: int, h: Any, kind: str) -> list[Any]:
        """The unversioned call, else ``_v2`` (an older driver without ``_v3``:
        pynvml then raises NVMLLibraryMismatchError, not an NVMLError)."""
        nv = self._nv
        mismatch = getattr(nv, "NVMLLibraryMismatchError", None) or NotImplementedError
        last = ""
        for fn_name in (f"nvmlDeviceGet{kind}RunningProcesses", f"nvmlDeviceGet{kind}RunningProcesses_v2"):
            fn = getattr(nv, fn_name, None)
            if fn is None:
                continue
            try:
                return list(fn(h))
            except mismatch as exc:
                last = str(exc)
            except nv.NVMLError as exc:
                if self._is(exc, "NOT_SUPPORTED"):
                    return []
                if self._is(exc, "FUNCTION_NOT_FOUND"):
                    last = "FUNCTION_NOT_FOUND"
                    continue
                raise BackendError(index, "list processes", self._code(exc.value), _detail(exc)) from None
        raise BackendError(index, "list processes", "FUNCTION_NOT_FOUND", f"no {kind.lower()} process call in this driver: {last}")

    # -- changes -------------------------------------------------------------

    def set_mig_mode(self, index: int, enabled: bool) -> None:
        nv = self._nv
        action = f"{'enable' if enabled else 'disable'} MIG mode"
        with self._gpu_lock(index):
            h = self._handle(index, action)
            mode = nv.NVML_DEVICE_MIG_ENABLE if enabled else nv.NVML_DEVICE_MIG_DISABLE
            with self._call(index, action):
                status = nv.nvmlDeviceSetMigMode(h, mode)
            self._profiles.pop(index, None)  # profile info is fixed only for the life of a mode
        status = int(status or 0)
        if status != nv.NVML_SUCCESS:
            # Not a failure of the call: the driver recorded the change and
            # says why it is not active yet (IN_USE: something holds the GPU;
            # NOT_SUPPORTED / RESET_REQUIRED: no reset here, e.g. a passthrough
            # VM). The engine reads mig_mode() and decides reset or reboot.
            log.info("GPU %d: %s: activation status %s; the change is pending", index, action, self._code(status))

    def create_gpu_instance(self, index: int, profile_id: int, start: int) -> GpuInstance:
        nv = self._nv
        action = f"create GPU instance (profile {profile_id} at {start})"
        with self._gpu_lock(index):
            h = self._handle(index, action)
            legal = self.possible_placements(index, profile_id)
            chosen = next(((s, size) for s, size in legal if s == start), None)
            if chosen is None:
                raise BackendError(index, action, "INVALID_ARGUMENT", f"not a legal placement; NVML allows starts {[s for s, _ in legal]}")
            placement = nv.c_nvmlGpuInstancePlacement_t()
            placement.start, placement.size = chosen
            with self._call(index, action):
                gi = nv.nvmlDeviceCreateGpuInstanceWithPlacement(h, profile_id, ctypes.byref(placement))
                info = nv.nvmlGpuInstanceGetInfo(gi)
            return GpuInstance(int(info.id), int(info.profileId), int(info.placement.start), int(info.placement.size))

    def create_compute_instance(self, index: int, gi_id: int, ci_profile_id: int) -> ComputeInstance:
        nv = self._nv
        action = f"create compute instance (profile {ci_profile_id}) in GPU instance {gi_id}"
        with self._gpu_lock(index):
            h = self._handle(index, action)
            with self._call(index, action):
                gi = nv.nvmlDeviceGetGpuInstanceById(h, gi_id)
            try:
                info = self._ci_profile_info(gi, ci_profile_id)
            except nv.NVMLError as exc:
                if self._is(exc, "NOT_SUPPORTED", "INVALID_ARGUMENT"):
                    # the simulator's code for "no such CI profile in this GI"
                    raise BackendError(index, action, "INVALID_ARGUMENT", f"GPU instance {gi_id} offers no CI profile {ci_profile_id}") from None
                raise BackendError(index, action, self._code(exc.value), _detail(exc)) from None
            with self._call(index, action):
                ci = nv.nvmlGpuInstanceCreateComputeInstance(gi, info.id)
                ci_info = nv.nvmlComputeInstanceGetInfo(ci)
            ci_id = int(ci_info.id)
            uuid = self._mig_uuids(index, h).get((gi_id, ci_id), "")
            return ComputeInstance(ci_id, ci_profile_id, int(ci_info.placement.start), int(ci_info.placement.size), uuid)

    def destroy_compute_instance(self, index: int, gi_id: int, ci_id: int) -> None:
        nv = self._nv
        action = f"destroy compute instance {ci_id} of GPU instance {gi_id}"
        with self._gpu_lock(index):
            h = self._handle(index, action)
            with self._call(index, action):
                gi = nv.nvmlDeviceGetGpuInstanceById(h, gi_id)
                ci = nv.nvmlGpuInstanceGetComputeInstanceById(gi, ci_id)
                nv.nvmlComputeInstanceDestroy(ci)

    def destroy_gpu_instance(self, index: int, gi_id: int) -> None:
        nv = self._nv
        action = f"destroy GPU instance {gi_id}"
        with self._gpu_lock(index):
            h = self._handle(index, action)
            with self._call(index, action):
                gi = nv.nvmlDeviceGetGpuInstanceById(h, gi_id)
                nv.nvmlGpuInstanceDestroy(gi)

    # -- reset ---------------------------------------------------------------

    def reset_available(self, index: int) -> bool:
        h = self._handle(index, "query reset")
        with self._call(index, "query reset"):
            bus_id = _text(self._nv.nvmlDeviceGetPciInfo(h).busId)
        # The kernel offers a function-level reset through this file; a
        # passthrough VM without it needs a reboot to apply a mode change.
        return (self._sysfs_root / "bus" / "pci" / "devices" / pci_sysfs_name(bus_id) / "reset").exists()

    def reset(self, indices: Sequence[int]) -> None:
        """Reset the GPUs together, by PCI bus id, with NVML released meanwhile."""
        targets = tuple(dict.fromkeys(indices))
        if not targets:
            return
        bus_ids = []
        for index in targets:
            h = self._handle(index, "reset GPU")
            with self._call(index, "reset GPU"):
                bus_ids.append(_text(self._nv.nvmlDeviceGetPciInfo(h).busId))
        locks = [self._gpu_lock(i) for i in sorted(targets)]  # one order: no deadlock
        for lock in locks:
            lock.acquire()
        try:
            with self._nvml_released(targets[0]):
                self._run_reset(targets, bus_ids)
            for index in targets:
                self._profiles.pop(index, None)
        finally:
            for lock in reversed(locks):
                lock.release()

    @contextmanager
    def _nvml_released(self, index: int) -> Iterator[None]:
        """NVML shut down in this process (refcount to zero) for the block.

        nvidia-smi refuses to reset while any NVML client is open, this
        process included; other backends of this process share the session,
        so they wait on the lock and find NVML initialised again afterwards.
        """
        with _INIT_LOCK:
            open_here = _INIT_COUNTS.get(id(self._nv), 0) > 0
            if open_here:
                with self._call(index, "shut down NVML before the reset"):
                    self._nv.nvmlShutdown()
            try:
                yield
            finally:
                if open_here:
                    with self._call(index, "initialise NVML after the reset"):
                        self._nv.nvmlInit()

    def _run_reset(self, targets: tuple[int, ...], bus_ids: list[str]) -> None:
        argv = [*self._nvidia_smi, "-r", "-i", ",".join(bus_ids)]
        action = "reset GPU" if len(targets) == 1 else f"reset GPUs {', '.join(map(str, targets))}"
        first = targets[0]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self._reset_timeout_s, check=False)
        except FileNotFoundError:
            raise BackendError(first, action, "NOT_FOUND", f"{self._nvidia_smi[0]} not found") from None
        except subprocess.TimeoutExpired:
            raise BackendError(first, action, "TIMEOUT", f"{' '.join(argv)} took more than {self._reset_timeout_s:g}s") from None
        if done.returncode != 0:
            output = " ".join((done.stdout + " " + done.stderr).split())
            code = "IN_USE" if "in use" in output.lower() else "RESET_FAILED"
            raise BackendError(first, action, code, f"{' '.join(argv)} exited {done.returncode}: {output[:400]}")
        log.debug("GPU(s) %s reset: %s", ",".join(map(str, targets)), " ".join(done.stdout.split()))

    def close(self) -> None:
        with _INIT_LOCK:
            if self._closed:
                return
            self._closed = True
            left = _INIT_COUNTS.get(id(self._nv), 1) - 1
            _INIT_COUNTS[id(self._nv)] = left
            if left == 0:
                with self._call(None, "shut down NVML"):
                    self._nv.nvmlShutdown()
