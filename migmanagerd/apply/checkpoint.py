"""Checkpoint files: the node's MIG mode and full layout, to restore later.

The format is nvidia-mig-parted's (api/checkpoint/v1, written by its
``checkpoint`` command), so either tool reads the other's files::

    {"Version": "v1",
     "MigState": {"Devices": [
        {"UUID": "GPU-…", "MigMode": 1,
         "GpuInstances": [
            {"ProfileID": 2, "Placement": {"Start": 0, "Size": 4},
             "ComputeInstances": [{"ProfileID": 1, "EngProfileID": 0,
                                   "Placement": {"Start": 0, "Size": 2}}]}]}]}}

``MigMode`` is 1 (enabled) or 0 (disabled), the mode in effect now. GPU
instance ``ProfileID`` is NVML's ``NVML_GPU_INSTANCE_PROFILE_*`` value (our
catalog's ``selector``), compute instance ``ProfileID`` NVML's
``NVML_COMPUTE_INSTANCE_PROFILE_*``. Only MIG-capable GPUs are listed. The
compute instances' ``Placement`` is ours (nvidia-mig-parted ignores unknown
keys and does not write it); with it, restore creates the CIs in start order.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migmanagerd.apply.observe import NodeState
from migmanagerd.catalog.model import GpuModel
from migmanagerd.errors import SourceLocation, UsageError
from migmanagerd.spec.profile import MigProfile
from migmanagerd.spec.types import ConfigEntry, MigConfig, PinnedInstance

VERSION = "v1"
ENV_FILE = "MIG_PARTED_CHECKPOINT_FILE"


@dataclass(frozen=True)
class DeviceState:
    uuid: str
    mig_enabled: bool
    gpu_instances: tuple[dict[str, Any], ...]  # as in the file; checked when used


def node_checkpoint(state: NodeState) -> dict[str, Any]:
    """The checkpoint document of an observed node."""
    devices = []
    for view in state.gpus:
        if not view.mig_capable:
            continue
        gis: list[dict[str, Any]] | None = None
        if view.mode.current:
            gis = []
            for gi in view.instances:
                gi_profile = view.model.gi_profile_by_id(gi.profile_id) if view.model else None
                if gi_profile is None:
                    raise UsageError(
                        f"GPU {view.index}: GPU instance {gi.id} has profile id {gi.profile_id}, which the catalog "
                        f"does not know for {view.model_name}; it cannot be checkpointed"
                    )
                gis.append(
                    {
                        "ProfileID": gi_profile.selector,
                        "Placement": {"Start": gi.start, "Size": gi.size},
                        "ComputeInstances": [
                            {"ProfileID": ci.profile_id, "EngProfileID": 0, "Placement": {"Start": ci.start, "Size": ci.size}}
                            for ci in sorted(gi.compute_instances, key=lambda c: (c.start, c.id))
                        ],
                    }
                )
        devices.append({"UUID": view.info.uuid, "MigMode": 1 if view.mode.current else 0, "GpuInstances": gis})
    return {"Version": VERSION, "MigState": {"Devices": devices}}


def read_checkpoint(path: str) -> tuple[DeviceState, ...]:
    """Parse a checkpoint file; a bad file is a usage error (exit 2) naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the checkpoint file: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}:{exc.colno}: checkpoint file is not valid JSON: {exc.msg}") from None
    if not isinstance(doc, dict) or doc.get("Version") != VERSION:
        version = doc.get("Version") if isinstance(doc, dict) else None
        raise UsageError(f"{path}: checkpoint version {version!r} is not supported (expected '{VERSION}')")
    mig_state = doc.get("MigState")
    devices = mig_state.get("Devices", None) if isinstance(mig_state, dict) else False
    if devices is None:  # Go writes a node without MIG-capable GPUs as null
        devices = []
    if not isinstance(devices, list):
        raise UsageError(f"{path}: checkpoint has no MigState.Devices list")
    out = []
    for n, dev in enumerate(devices):
        where = f"{path}: MigState.Devices[{n}]"
        if not isinstance(dev, dict) or not isinstance(dev.get("UUID"), str):
            raise UsageError(f"{where}: expected an object with a UUID string")
        mode = dev.get("MigMode")
        if mode not in (0, 1) or isinstance(mode, bool):
            raise UsageError(f"{where}: MigMode must be 0 or 1, got {mode!r}")
        gis = dev.get("GpuInstances") or []
        if not isinstance(gis, list) or not all(isinstance(g, dict) for g in gis):
            raise UsageError(f"{where}: GpuInstances must be a list of objects")
        out.append(DeviceState(dev["UUID"], mode == 1, tuple(gis)))
    return tuple(out)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{where}: expected a non-negative integer, got {value!r}")
    return value


def _pins(model: GpuModel, dev: DeviceState, where: str) -> tuple[PinnedInstance, ...]:
    pins = []
    for n, gi in enumerate(dev.gpu_instances):
        at = f"{where}.GpuInstances[{n}]"
        selector = _int(gi.get("ProfileID"), f"{at}.ProfileID")
        profile = next((p for p in model.gi_profiles if p.selector == selector), None)
        if profile is None:
            raise UsageError(f"{at}: GPU instance profile {selector} does not exist on {model.name}")
        place = gi.get("Placement")
        start = _int(place.get("Start") if isinstance(place, dict) else None, f"{at}.Placement.Start")
        cis = []
        for k, ci in enumerate(gi.get("ComputeInstances") or []):
            cat = f"{at}.ComputeInstances[{k}]"
            if not isinstance(ci, dict):
                raise UsageError(f"{cat}: expected an object")
            ci_id = _int(ci.get("ProfileID"), f"{cat}.ProfileID")
            ci_profile = next((c for c in profile.ci_profiles if c.nvml_id == ci_id), None)
            if ci_profile is None:
                raise UsageError(f"{cat}: compute instance profile {ci_id} does not exist in a {profile.name} GPU instance")
            ci_place = ci.get("Placement")
            ci_start = _int(ci_place.get("Start"), f"{cat}.Placement.Start") if isinstance(ci_place, dict) else None
            cis.append((ci_profile.name, ci_start))
        pins.append(PinnedInstance(profile.name, start, tuple(cis)))
    return tuple(pins)


def checkpoint_config(
    path: str, devices: Sequence[DeviceState], gpus: Sequence[tuple[int, str, GpuModel | None]]
) -> MigConfig:
    """A config that restores ``devices`` exactly: one entry per GPU (by index),
    each pinned to the checkpoint's layout. ``gpus`` is (index, UUID, model)
    for this node's GPUs."""
    by_uuid = {uuid: (index, model) for index, uuid, model in gpus}
    name = f"checkpoint {path}"
    entries = []
    for n, dev in enumerate(devices):
        where = f"{path}: MigState.Devices[{n}]"
        if dev.uuid not in by_uuid:
            raise UsageError(f"{where}: GPU {dev.uuid} is not in this node; nothing was changed")
        index, model = by_uuid[dev.uuid]
        pins: tuple[PinnedInstance, ...] = ()
        if dev.mig_enabled:
            if model is None:
                raise UsageError(f"{where}: GPU {index} ({dev.uuid}) is a model without MIG geometry in the catalog")
            pins = _pins(model, dev, where)
        counts: Counter[str] = Counter(name for pin in pins for name, _ in pin.cis)
        entries.append(
            ConfigEntry(
                config=name,
                position=n,
                devices=(index,),
                device_filters=(),
                mig_enabled=dev.mig_enabled,
                mig_devices=tuple((MigProfile.parse(p), k) for p, k in counts.items()),
                loc=SourceLocation(path, 1, 1),
                layout=pins if dev.mig_enabled else None,
            )
        )
    return MigConfig(name=name, entries=tuple(entries), loc=SourceLocation(path, 1, 1))
