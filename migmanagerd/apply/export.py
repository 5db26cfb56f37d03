"""``export``: the node's current MIG layout as a v1 config named ``current``.

GPUs with the same PCI id, mode and MIG devices share one entry
(``devices: [i, j]`` plus a device-filter), so applying the exported config
to this node reproduces it. The v1 format counts compute instances, so a GPU
instance holding several is written as its CIs (``3g.20gb[cis=1c,1c]`` ->
``1c.3g.20gb: 2``), which nvidia-mig-parted's packing (planner.packing) turns
back into the same GPU instances. Where it would not (CIs grouped by hand in
a way the packing never produces, e.g. two 3g.20gb GIs with one 1c CI each),
the export says so in a warning. A GPU instance without compute instances,
or with a CI profile the catalog does not know, cannot be written; it is
left out with a warning rather than exported as something else.
"""

from __future__ import annotations

from collections import Counter

from migmanagerd.apply.compare import format_devices
from migmanagerd.apply.configtext import ConfigText, EntryText
from migmanagerd.apply.observe import GpuView, NodeState
from migmanagerd.planner.placement import plan_gpu
from migmanagerd.planner.types import GpuPlan
from migmanagerd.spec.profile import MigProfile, ProfileNameError

DEFAULT_LABEL = "current"


def _sort_key(profile: str) -> tuple[int, MigProfile | None, str]:
    try:
        return (0, MigProfile.parse(profile), profile)
    except ProfileNameError:
        return (1, None, profile)


# GPUs export as one entry when PCI id, MIG mode and devices (profile, count) agree
_GroupKey = tuple[int, bool, tuple[tuple[str, int], ...]]


def node_config(state: NodeState, name: str = DEFAULT_LABEL) -> tuple[ConfigText, list[str]]:
    warnings: list[str] = []
    groups: dict[_GroupKey, list[int]] = {}
    models: dict[_GroupKey, str] = {}
    for view in state.gpus:
        if not view.mig_capable:
            continue
        devices: Counter[str] = Counter()
        if view.mode.current:
            devices = _gpu_devices(view, warnings)
        ordered = tuple(sorted(devices.items(), key=lambda kv: _sort_key(kv[0])))
        key = (view.info.pci_device_id, view.mode.current, ordered)
        groups.setdefault(key, []).append(view.index)
        models.setdefault(key, view.model_name)
    entries = tuple(
        EntryText(
            devices=tuple(indices),
            device_filters=(device_id,),
            mig_enabled=enabled,
            mig_devices=devices,
            comment=models[(device_id, enabled, devices)],
        )
        for (device_id, enabled, devices), indices in groups.items()
    )
    return ConfigText(name, entries), warnings


def _expressible(profile: str) -> bool:
    try:
        return str(MigProfile.parse(profile)) == profile
    except ProfileNameError:
        return False


def _gpu_devices(view: GpuView, warnings: list[str]) -> Counter[str]:
    """The compute instances of one GPU as v1 ``mig-devices`` counts."""
    devices: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    for d in view.devices:
        names = [c.profile for c in d.cis] or [d.profile]
        if not d.cis or not all(_expressible(n) for n in names):
            warnings.append(
                f"GPU {view.index}: GPU instance at slot {d.placement.start} ({d.profile}) has no compute instance "
                "or one of a profile the catalog does not know; the v1 config format cannot express it, so it is left out"
            )
            continue
        devices.update(names)
        shapes[d.profile] += 1
    if view.model is not None and devices:
        planned = plan_gpu(view.model, (), [(MigProfile.parse(p), n) for p, n in devices.items()])
        if isinstance(planned, GpuPlan):
            again = Counter(d.profile for d in planned.create)
            if again != shapes:
                warnings.append(
                    f"GPU {view.index}: its compute instances are grouped as {format_devices(shapes)}; "
                    f"applying the exported config groups them as nvidia-mig-parted does: {format_devices(again)}"
                )
    return devices
