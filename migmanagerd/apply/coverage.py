"""Does the selected config select any GPU of this node? Pure.

A config whose device-filters admit only other GPU models (``all-1g.20gb``
is for 80GB GPUs) or whose indices the node lacks changes nothing, and both
``select`` and the boot would report it as applied while no GPU has the
layout the operator chose. That is almost always the wrong config for this
node, so it is refused (exit 2) with what the config admits and what the
node has. A node without MIG-capable GPUs is exempt: no config could select
one there, and refusing would fail every boot of a mixed fleet's other nodes.
"""

from __future__ import annotations

from migmanagerd.apply.nodeplan import slot_of
from migmanagerd.apply.observe import NodeState
from migmanagerd.catalog.load import Catalog
from migmanagerd.errors import UsageError
from migmanagerd.planner.node import resolve_config
from migmanagerd.spec.types import ConfigEntry, MigConfig


def _admits_text(entry: ConfigEntry, catalog: Catalog) -> str:
    if entry.device_filters:
        names: list[str] = []
        for f in entry.device_filters:
            known = [m.name for m in catalog.models if f.device_id in m.pci_ids]
            names.extend(n for n in known or [str(f)] if n not in names)
        what = ", ".join(names)
    else:
        what = "any model"
    if entry.devices != "all":
        what += f" at GPU index{'es' if len(entry.devices) > 1 else ''} {', '.join(map(str, entry.devices))}"
    return what


def selection_gap(config: MigConfig, state: NodeState, catalog: Catalog) -> str | None:
    """Why ``config`` selects no MIG-capable GPU of the node, or None when it selects one
    (or the node has none to select)."""
    capable = [v for v in state.gpus if v.mig_capable]
    if not capable or resolve_config(config, [slot_of(v) for v in state.gpus]):
        return None
    admitted = "; ".join(dict.fromkeys(_admits_text(e, catalog) for e in config.entries))
    node: dict[str, list[int]] = {}
    for v in capable:
        node.setdefault(v.model_name, []).append(v.index)
    has = "; ".join(f"{name} (GPU{'s' if len(idx) > 1 else ''} {', '.join(map(str, idx))})" for name, idx in node.items())
    return (
        f"config '{config.name}' selects no GPU of this node, so applying it would change nothing: "
        f"it admits {admitted}; this node has {has}"
    )


def require_selects_gpu(config: MigConfig, state: NodeState, catalog: Catalog) -> None:
    """Raise ``UsageError`` (exit 2, nothing touched) when ``selection_gap`` finds a gap."""
    gap = selection_gap(config, state, catalog)
    if gap is not None:
        raise UsageError(gap)
