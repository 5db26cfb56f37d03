"""``export``: the node's current MIG layout as a v1 config named ``current``.

GPUs with the same PCI id, mode and MIG devices share one entry
(``devices: [i, j]`` plus a device-filter), so applying the exported config
to this node reproduces it. A GPU instance that is not one MIG device (no
compute instance, or several) cannot be written in the v1 format; it is
left out with a warning rather than exported as something else.
"""

from __future__ import annotations

from collections import Counter

from migmanagerd.apply.configtext import ConfigText, EntryText
from migmanagerd.apply.observe import NodeState
from migmanagerd.spec.profile import MigProfile, ProfileNameError

DEFAULT_LABEL = "current"


def _sort_key(profile: str):
    try:
        return (0, MigProfile.parse(profile), profile)
    except ProfileNameError:
        return (1, None, profile)


def node_config(state: NodeState, name: str = DEFAULT_LABEL) -> tuple[ConfigText, list[str]]:
    warnings: list[str] = []
    groups: dict[tuple, list[int]] = {}
    models: dict[tuple, str] = {}
    for view in state.gpus:
        if not view.mig_capable:
            continue
        devices: Counter[str] = Counter()
        if view.mode.current:
            for d in view.devices:
                if "[" in d.profile or not d.profile[0].isdigit():
                    warnings.append(
                        f"GPU {view.index}: GPU instance at slot {d.placement.start} ({d.profile}) is not one MIG device; "
                        "the v1 config format cannot express it, so it is left out"
                    )
                    continue
                devices[d.profile] += 1
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
