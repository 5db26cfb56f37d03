"""Simulated node specs: ``8xA100-SXM4-40GB``, ``4xH100-80GB,2xA30-24GB``,
``1x0x1FB010DE`` (a bare 32-bit PCI id: a GPU without MIG, as the display GPU
of a DGX Station).

Model names are looked up in the catalog (case-insensitive, aliases too).
GPU UUIDs are derived from the spec and the index, so the same spec always
gives the same node.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from migmanagerd.catalog.model import NVIDIA_VENDOR_ID, GpuModel
from migmanagerd.errors import UsageError
from migmanagerd.gpu.sim_state import SimGpu, SimNode

_ITEM = re.compile(r"^(?:(?P<count>\d+)[xX])?(?P<what>.+)$")
_PCI_ID = re.compile(r"^0[xX](?P<hex>[0-9a-fA-F]{8})$")
_UUID_NS = uuid.UUID("5b1c8d0e-3a7f-4d2a-9f61-6d6967736d31")  # fixed: same spec, same UUIDs

# A GPU without MIG gets this much memory; nothing depends on it.
NON_MIG_MEMORY_MIB = 4096


class ModelCatalog(Protocol):
    def find(self, text: str) -> GpuModel | None: ...


@dataclass(frozen=True)
class NodeItem:
    """One GPU of a spec: a catalog model, or a bare PCI id without MIG."""

    model: GpuModel | None
    pci_device_id: int  # 0xDDDDVVVV


def default_catalog() -> ModelCatalog:
    from migmanagerd.catalog.load import load_catalog  # imported late

    return load_catalog()


def _find(catalog: Any, text: str) -> GpuModel | None:
    try:
        model: GpuModel | None = catalog.find(text)
        return model
    except (KeyError, LookupError, ValueError, UsageError):
        return None


def _for_device(catalog: Any, pci_id: int) -> GpuModel | None:
    lookup = getattr(catalog, "for_device", None)
    if lookup is None:
        return None
    try:
        model: GpuModel | None = lookup(pci_id, "")
        return model
    except (KeyError, LookupError, ValueError, UsageError, TypeError):
        return None


def _known_names(catalog: Any) -> str:
    models = getattr(catalog, "models", ())
    if isinstance(models, dict):
        models = models.values()
    names = sorted(getattr(m, "name", str(m)) for m in models)
    return ", ".join(names) if names else "see the catalog"


def parse_node_spec(spec: str, catalog: ModelCatalog | None = None) -> list[NodeItem]:
    if catalog is None:
        catalog = default_catalog()
    if not spec or not spec.strip():
        raise UsageError("sim node spec is empty; expected e.g. 8xA100-SXM4-40GB or 4xH100-80GB,2xA30-24GB")
    items: list[NodeItem] = []
    for part in (p.strip() for p in spec.split(",")):
        m = _ITEM.match(part)
        if not part or m is None:
            raise UsageError(f"sim node spec '{spec}': empty item; expected COUNTxMODEL, e.g. 8xA100-SXM4-40GB")
        count = int(m["count"]) if m["count"] is not None else 1
        if count < 1:
            raise UsageError(f"sim node spec '{spec}': '{part}': count must be at least 1")
        what = m["what"].strip()
        pci = _PCI_ID.match(what)
        if pci is not None:
            pci_id = int(pci["hex"], 16)
            if pci_id & 0xFFFF != NVIDIA_VENDOR_ID:
                raise UsageError(f"sim node spec '{spec}': '{part}': PCI id {what} is not an NVIDIA device (vendor must be 10DE)")
            item = NodeItem(_for_device(catalog, pci_id), pci_id)
        else:
            model = _find(catalog, what)
            if model is None:
                raise UsageError(f"sim node spec '{spec}': unknown GPU model '{what}' (known: {_known_names(catalog)})")
            item = NodeItem(model, model.pci_ids[0] if model.pci_ids else NVIDIA_VENDOR_ID)
        items.extend([item] * count)
    if len(items) > 64:
        raise UsageError(f"sim node spec '{spec}': {len(items)} GPUs; at most 64 are simulated")
    return items


def gpu_uuid(spec: str, index: int) -> str:
    return f"GPU-{uuid.uuid5(_UUID_NS, f'{spec}#{index}')}"


def pci_bus_id(index: int) -> str:
    return f"00000000:{(0x07 + 8 * index) & 0xFF:02X}:00.0"


def build_node(spec: str, items: list[NodeItem], *, latency: dict[str, float] | None = None, no_reset: bool = False) -> SimNode:
    gpus = []
    for index, item in enumerate(items):
        m = item.model
        if m is not None:
            name = m.product_names[0] if m.product_names else f"NVIDIA {m.name}"
            memory = m.memory_mib
        else:
            name = f"NVIDIA GPU {item.pci_device_id >> 16:04X}"
            memory = NON_MIG_MEMORY_MIB
        gpus.append(
            SimGpu(
                index=index,
                uuid=gpu_uuid(spec, index),
                model=m.name if m is not None else None,
                name=name,
                pci_device_id=item.pci_device_id,
                pci_subsystem_id=item.pci_device_id,  # nothing reads it; hardware has a board id here
                pci_bus_id=pci_bus_id(index),
                memory_mib=memory,
            )
        )
    return SimNode(node=spec.strip(), gpus=gpus, latency=dict(latency or {}), no_reset=no_reset)
