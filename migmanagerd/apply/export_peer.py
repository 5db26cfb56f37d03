"""The exported config in nvidia-mig-parted's own shape (``nvidia-mig-parted export``).

``export`` (apply/export.py) writes one entry per PCI id, mode and MIG
devices, each with its device-filter and explicit indices. nvidia-mig-parted
merges further, and scripts that compare its output expect that shape (its
README shows ``devices: all`` with no filter); from its export source:

* entries with the same mode and MIG devices merge, whatever their PCI ids
  (indices and filters united);
* device-filters are dropped when the node has one PCI id, or when one entry
  is left;
* ``devices`` becomes ``all`` when the entry holds every GPU of its filters.

Both shapes apply to the same layout on this node. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from migmanagerd.apply.configtext import ConfigText, EntryText


@dataclass
class _Merged:
    indices: set[int]
    filters: set[int]
    mig_enabled: bool
    mig_devices: tuple[tuple[str, int], ...]
    comments: list[str]


def _explicit(entry: EntryText) -> tuple[int, ...]:
    if entry.devices == "all":
        raise ValueError("export entries name their GPUs")
    return entry.devices


def peer_shape(config: ConfigText) -> ConfigText:
    """``config`` (as ``node_config`` builds it) merged as nvidia-mig-parted does."""
    merged: list[_Merged] = []
    by_filter: dict[int, set[int]] = {}
    for e in config.entries:
        indices = set(_explicit(e))
        for f in e.device_filters:
            by_filter.setdefault(f, set()).update(indices)
        same = next((m for m in merged if m.mig_enabled == e.mig_enabled
                     and sorted(m.mig_devices) == sorted(e.mig_devices)), None)
        if same is None:
            merged.append(_Merged(indices, set(e.device_filters), e.mig_enabled, e.mig_devices,
                                  [e.comment] if e.comment else []))
            continue
        same.indices |= indices
        same.filters |= set(e.device_filters)
        if e.comment and e.comment not in same.comments:
            same.comments.append(e.comment)
    drop_filters = len(by_filter) <= 1 or len(merged) == 1
    return ConfigText(config.name, tuple(_entry(m, by_filter, drop_filters) for m in merged), config.comment)


def _entry(m: _Merged, by_filter: dict[int, set[int]], drop_filters: bool) -> EntryText:
    covered: set[int] = set().union(*(by_filter[f] for f in m.filters))
    devices: Literal["all"] | tuple[int, ...] = "all" if m.indices == covered else tuple(sorted(m.indices))
    return EntryText(
        devices=devices,
        device_filters=() if drop_filters else tuple(sorted(m.filters)),
        mig_enabled=m.mig_enabled,
        mig_devices=m.mig_devices,
        comment=", ".join(m.comments) or None,
    )
