#!/usr/bin/env python3
"""Read-only NVML discovery: what a real node says, next to what the catalog says.

Run on a GPU node (as root or not; nothing is changed):

    python3 scripts/nvml_readonly_discovery.py > discovery.json

It records, per GPU: product name, UUID, PCI device/subsystem/bus ids,
memory, MIG mode (current/pending), every GPU-instance profile NVML returns
for each selector (id, slices, instance count, memory, SMs, engines), the
possible placements of each profile, the GPU and compute instances that
exist, and whether sysfs offers a reset for the GPU. Then it compares profile
ids, slice counts, instance counts and placements with migmanagerd's catalog
and lists every difference under ``catalog_diff``.

Nothing here can change the GPU: NVML is reached through a proxy that
refuses any Set/Create/Destroy/Reset call, so a mistake fails loudly instead.
docs/hardware-validation.md says how to run it and record the result.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path
from typing import Any

MAX_SELECTORS = 256
HEADROOM = 8  # instance lists: A30 reports fewer than exist
_MUTATING = ("Set", "Create", "Destroy", "Reset", "Clear", "Register", "Unregister")


class ReadOnlyNvml:
    """Passes through to pynvml except for calls that change anything."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    def __dir__(self) -> list[str]:
        return [n for n in dir(self._nvml) if not (n.startswith("nvml") and any(w in n for w in _MUTATING))]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvml") and any(word in name for word in _MUTATING):
            raise PermissionError(f"{name} changes the GPU; this script is read-only")
        return getattr(self._nvml, name)


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _err(nv: Any, exc: Exception) -> str:
    """NVML's name for the error (``FUNCTION_NOT_FOUND``), looked up on the
    bindings themselves: the read-only proxy does not list their constants."""
    value = getattr(exc, "value", None)
    module = getattr(nv, "_nvml", nv)
    for attr in dir(module):
        if attr.startswith("NVML_ERROR_") and getattr(module, attr) == value:
            return attr[len("NVML_ERROR_"):]
    return repr(exc)


def _try(nv: Any, fn: Any, *args: Any, **kw: Any) -> tuple[Any, str | None]:
    try:
        return fn(*args, **kw), None
    except nv.NVMLError as exc:
        return None, _err(nv, exc)


def _placements(nv: Any, h: Any, profile_id: int) -> tuple[list[list[int]] | None, str | None]:
    count = ctypes.c_uint(0)
    _, err = _try(nv, nv.nvmlDeviceGetGpuInstancePossiblePlacements, h, profile_id, None, ctypes.byref(count))
    if err:
        return None, err
    if count.value == 0:
        return [], None
    buf = (nv.c_nvmlGpuInstancePlacement_t * count.value)()
    _, err = _try(nv, nv.nvmlDeviceGetGpuInstancePossiblePlacements, h, profile_id, buf, ctypes.byref(count))
    if err:
        return None, err
    return [[int(buf[i].start), int(buf[i].size)] for i in range(count.value)], None


def _profiles(nv: Any, h: Any) -> list[dict[str, Any]]:
    out = []
    # Until INVALID_ARGUMENT (nvml.h), not the bindings' COUNT: nvidia-ml-py
    # 12.5xx stops at 0xA and would hide the +gfx/-me/+me.all profiles.
    for selector in range(MAX_SELECTORS):
        info, err = _try(nv, nv.nvmlDeviceGetGpuInstanceProfileInfo, h, selector)
        if err == "FUNCTION_NOT_FOUND":
            info, err = _try(nv, nv.nvmlDeviceGetGpuInstanceProfileInfo, h, selector, version=1)
        if err == "INVALID_ARGUMENT":
            break
        if err:
            out.append({"selector": selector, "error": err})
            continue
        entry: dict[str, Any] = {"selector": selector}
        for f in ("id", "sliceCount", "instanceCount", "memorySizeMB", "multiprocessorCount", "copyEngineCount",
                  "decoderCount", "encoderCount", "jpegCount", "ofaCount", "isP2pSupported"):
            if hasattr(info, f):
                entry[f] = int(getattr(info, f))
        if hasattr(info, "name"):
            entry["name"] = _text(info.name)
        placements, perr = _placements(nv, h, int(info.id))
        entry["placements"] = placements if perr is None else {"error": perr}
        out.append(entry)
    return out


def _compute_instances(nv: Any, gi: Any) -> list[dict[str, Any]]:
    out = []
    shared = nv.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
    for enum in range(MAX_SELECTORS):
        cinfo, err = _try(nv, nv.nvmlGpuInstanceGetComputeInstanceProfileInfo, gi, enum, shared)
        if err == "FUNCTION_NOT_FOUND":
            cinfo, err = _try(nv, nv.nvmlGpuInstanceGetComputeInstanceProfileInfo, gi, enum, shared, version=1)
        if err == "INVALID_ARGUMENT":
            break
        if err or not cinfo.instanceCount:
            continue
        cbuf = (nv.c_nvmlComputeInstance_t * (int(cinfo.instanceCount) + HEADROOM))()
        ccount = ctypes.c_uint(len(cbuf))
        _, err = _try(nv, nv.nvmlGpuInstanceGetComputeInstances, gi, cinfo.id, cbuf, ctypes.byref(ccount))
        if err:
            continue
        for k in range(min(ccount.value, len(cbuf))):
            ci, err = _try(nv, nv.nvmlComputeInstanceGetInfo, cbuf[k])
            if not err:
                out.append({"id": int(ci.id), "profile_enum": enum, "profile_id": int(ci.profileId),
                            "placement": [int(ci.placement.start), int(ci.placement.size)]})
    return out


def _instances(nv: Any, h: Any, profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in profiles:
        if "id" not in p or not p.get("instanceCount"):
            continue
        buf = (nv.c_nvmlGpuInstance_t * (p["instanceCount"] + HEADROOM))()
        count = ctypes.c_uint(len(buf))
        _, err = _try(nv, nv.nvmlDeviceGetGpuInstances, h, p["id"], buf, ctypes.byref(count))
        if err:
            continue
        for i in range(min(count.value, len(buf))):
            info, err = _try(nv, nv.nvmlGpuInstanceGetInfo, buf[i])
            if err:
                out.append({"error": err})
                continue
            out.append({"id": int(info.id), "profile_id": int(info.profileId),
                        "placement": [int(info.placement.start), int(info.placement.size)],
                        "compute_instances": _compute_instances(nv, buf[i])})
    return out


def _sysfs_name(bus_id: str) -> str:
    domain, _, rest = bus_id.strip().lower().partition(":")
    return f"{int(domain, 16) & 0xFFFF:04x}:{rest}" if rest else bus_id.lower()


def compare_with_catalog(gpu: dict[str, Any], model: Any) -> list[str]:
    """Differences between NVML's answers and the catalog model, one line each."""
    if model is None:
        return ["no catalog model for this GPU"] if gpu.get("mig_mode") else []
    diffs = []
    seen = {p["id"]: p for p in gpu["profiles"] if "id" in p}
    for cp in model.gi_profiles:
        p = seen.pop(cp.nvml_id, None)
        if p is None:
            diffs.append(f"{cp.name}: catalog id {cp.nvml_id} (selector {cp.selector}) not reported by NVML")
            continue
        if p["selector"] != cp.selector:
            diffs.append(f"{cp.name}: selector {p['selector']} (catalog {cp.selector})")
        if p.get("sliceCount") != cp.compute_slices:
            diffs.append(f"{cp.name}: sliceCount {p.get('sliceCount')} (catalog {cp.compute_slices})")
        if p.get("instanceCount") != cp.max_count:
            diffs.append(f"{cp.name}: instanceCount {p.get('instanceCount')} (catalog {cp.max_count})")
        want = [[s, cp.memory_slices] for s in cp.placements]
        if isinstance(p.get("placements"), list) and sorted(p["placements"]) != sorted(want):
            diffs.append(f"{cp.name}: placements {p['placements']} (catalog {want})")
    for pid, p in sorted(seen.items()):
        diffs.append(f"NVML profile id {pid} (selector {p['selector']}, {p.get('name', '?')}) is not in the catalog")
    return diffs


def discover(nvml: Any, *, catalog: Any = None, sysfs_root: str = "/sys") -> dict[str, Any]:
    nv = ReadOnlyNvml(nvml)
    nv.nvmlInit()
    try:
        report: dict[str, Any] = {"gpus": []}
        for name in ("nvmlSystemGetDriverVersion", "nvmlSystemGetNVMLVersion"):
            fn = getattr(nvml, name, None)
            if fn is not None:
                value, err = _try(nv, fn)
                report[name.replace("nvmlSystemGet", "").lower()] = _text(value) if err is None else {"error": err}
        for index in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(index)
            pci = nv.nvmlDeviceGetPciInfo(h)
            bus_id = _text(pci.busId)
            gpu: dict[str, Any] = {
                "index": index,
                "name": _text(nv.nvmlDeviceGetName(h)),
                "uuid": _text(nv.nvmlDeviceGetUUID(h)),
                "pci_device_id": f"0x{int(pci.pciDeviceId):08X}",
                "pci_subsystem_id": f"0x{int(pci.pciSubSystemId):08X}",
                "pci_bus_id": bus_id,
                "memory_mib": int(nv.nvmlDeviceGetMemoryInfo(h).total) // (1024 * 1024),
                "sysfs_reset": (Path(sysfs_root) / "bus/pci/devices" / _sysfs_name(bus_id) / "reset").exists(),
            }
            mode, err = _try(nv, nv.nvmlDeviceGetMigMode, h)
            gpu["mig_mode"] = None if err else {"current": int(mode[0]), "pending": int(mode[1])}
            gpu["profiles"] = _profiles(nv, h) if gpu["mig_mode"] else []
            gpu["max_mig_devices"], _ = _try(nv, nv.nvmlDeviceGetMaxMigDeviceCount, h) if gpu["mig_mode"] else (None, None)
            gpu["instances"] = _instances(nv, h, gpu["profiles"]) if gpu["mig_mode"] and gpu["mig_mode"]["current"] else []
            model = None
            if catalog is not None:
                model = catalog.for_device(int(pci.pciDeviceId), gpu["name"])
            gpu["catalog_model"] = getattr(model, "name", None)
            gpu["catalog_diff"] = compare_with_catalog(gpu, model) if catalog is not None else None
            report["gpus"].append(gpu)
        return report
    finally:
        nv.nvmlShutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-catalog", action="store_true", help="do not compare with migmanagerd's catalog")
    ap.add_argument("--sysfs-root", default="/sys")
    args = ap.parse_args(argv)
    try:
        import pynvml
    except ImportError:
        print("nvidia-ml-py (pynvml) is not installed", file=sys.stderr)
        return 2
    catalog = None
    if not args.no_catalog:
        try:
            from migmanagerd.catalog.load import load_catalog

            catalog = load_catalog()
        except ImportError:
            print("migmanagerd is not importable; comparing nothing (use the project's venv)", file=sys.stderr)
    try:
        report = discover(pynvml, catalog=catalog, sysfs_root=args.sysfs_root)
    except pynvml.NVMLError as exc:
        print(f"NVML: {exc}", file=sys.stderr)
        return 1
    json.dump(report, sys.stdout, indent=2)
    print()
    diffs = sum(len(g["catalog_diff"] or []) for g in report["gpus"])
    print(f"{len(report['gpus'])} GPU(s); {diffs} catalog difference(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
