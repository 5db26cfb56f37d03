"""Which config entry applies to which GPU of this node.

nvidia-mig-parted semantics: an entry selects the GPUs named by ``devices``
(``all`` or indices) that also pass its ``device-filter``. GPUs no entry
selects are left as they are. Contradictions are operator errors (exit 2),
reported against the entry before anything on the node is touched.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from migmanagerd.catalog.model import GpuModel
from migmanagerd.errors import SpecError
from migmanagerd.log import get_logger
from migmanagerd.planner.placement import plan_gpu
from migmanagerd.planner.types import Infeasible
from migmanagerd.spec.profile import MigProfile
from migmanagerd.spec.types import ConfigEntry, MigConfig, PinnedInstance

log = get_logger("planner")


@dataclass(frozen=True)
class GpuSlot:
    """One GPU of the node as the resolver needs it."""

    index: int
    pci_device_id: int  # 32-bit 0xDDDDVVVV
    pci_subsystem_id: int | None
    model: GpuModel | None  # None: not in the catalog
    mig_capable: bool


@dataclass(frozen=True)
class GpuTarget:
    """What the selected config wants for one GPU."""

    index: int
    entry: ConfigEntry
    mig_enabled: bool
    mig_devices: tuple[tuple[MigProfile, int], ...]
    layout: tuple[PinnedInstance, ...] | None = None  # restore: exact placements


class _GpuInfoLike(Protocol):
    index: int
    name: str
    pci_device_id: int
    pci_subsystem_id: int
    memory_mib: int
    mig_capable: bool


class _CatalogLike(Protocol):
    def for_device(self, pci_device_id: int, product_name: str, memory_mib: int | None = None) -> GpuModel | None: ...


def gpu_slot(info: _GpuInfoLike, catalog: _CatalogLike) -> GpuSlot:
    """A ``GpuSlot`` from a backend's ``GpuInfo`` and the catalog."""
    model = catalog.for_device(info.pci_device_id, info.name, info.memory_mib)
    return GpuSlot(info.index, info.pci_device_id, info.pci_subsystem_id, model, info.mig_capable)


def _context(entry: ConfigEntry) -> str:
    return f"config '{entry.config}' entry {entry.position}"


def _indices_text(gpus: Sequence[GpuSlot]) -> str:
    if not gpus:
        return "this node has no GPUs"
    idx = sorted(g.index for g in gpus)
    if idx == list(range(idx[0], idx[-1] + 1)) and len(idx) > 2:
        return f"this node has GPUs {idx[0]}-{idx[-1]}"
    return "this node has GPU" + ("s " if len(idx) > 1 else " ") + ", ".join(map(str, idx))


def _warn_missing_indices(entry: ConfigEntry, by_index: Mapping[int, GpuSlot], gpus: Sequence[GpuSlot]) -> None:
    """nvidia-mig-parted skips indices a node lacks, so one config file can
    serve a whole cluster (NVIDIA's example custom-config names GPUs 0-7);
    so do we, saying which. `validate --gpu-count` flags them before a rollout."""
    missing = missing_indices(entry, by_index)
    if missing:
        log.warning(
            "%s: devices: GPU index%s %s not on this node (%s); left out",
            entry.where, "es" if len(missing) > 1 else "", ", ".join(map(str, missing)), _indices_text(gpus),
        )


def resolve_config(config: MigConfig, gpus: Sequence[GpuSlot]) -> dict[int, GpuTarget]:
    """The target of every GPU some entry of ``config`` selects, keyed by GPU index."""
    by_index = {g.index: g for g in gpus}
    owner: dict[int, ConfigEntry] = {}
    targets: dict[int, GpuTarget] = {}
    for entry in config.entries:
        ctx = _context(entry)
        explicit = entry.devices != "all"
        _warn_missing_indices(entry, by_index, gpus)
        for gpu in sorted(gpus, key=lambda g: g.index):
            if not entry.selects(gpu.index, gpu.pci_device_id, gpu.pci_subsystem_id):
                continue
            if gpu.index in owner:
                first = owner[gpu.index]
                raise SpecError(
                    f"GPU {gpu.index} is selected by this entry and by entry {first.position} "
                    f"(line {first.loc.line}); each GPU may be selected once",
                    entry.loc, context=ctx,
                )
            if not gpu.mig_capable:
                if explicit and entry.mig_enabled:
                    raise SpecError(
                        f"GPU {gpu.index} (PCI id 0x{gpu.pci_device_id:08X}) is not MIG-capable "
                        "but mig-enabled is true",
                        entry.loc, context=ctx, field="devices",
                    )
                log.debug("%s: GPU %d is not MIG-capable; left alone", ctx, gpu.index)
                owner[gpu.index] = entry
                continue
            if entry.mig_enabled and gpu.model is None:
                raise SpecError(
                    f"GPU {gpu.index} (PCI id 0x{gpu.pci_device_id:08X}) is a GPU model the MIG "
                    "catalog does not know, so its MIG geometry cannot be checked",
                    entry.loc, context=ctx,
                )
            owner[gpu.index] = entry
            targets[gpu.index] = GpuTarget(
                index=gpu.index,
                entry=entry,
                mig_enabled=entry.mig_enabled,
                mig_devices=entry.mig_devices if entry.mig_enabled else (),
                layout=entry.layout if entry.mig_enabled else None,
            )
    return targets


def missing_indices(entry: ConfigEntry, present: Collection[int]) -> tuple[int, ...]:
    """The GPU indices ``entry`` names that are not in ``present``, sorted."""
    if entry.devices == "all":
        return ()
    return tuple(sorted(i for i in set(entry.devices) if i not in present))


def admits(entry: ConfigEntry, model: GpuModel) -> bool:
    """Whether the entry's device-filter lets it apply to some GPU of ``model``.

    The catalog does not know subsystem ids, so a filter's subsystem part is
    not checked here.
    """
    if not entry.device_filters:
        return True
    ids = set(model.pci_ids)
    return any(f.device_id in ids for f in entry.device_filters)


def fits_model(entry: ConfigEntry, model: GpuModel) -> str | None:
    """None when the entry's MIG devices fit one (empty) GPU of ``model``, else the reason."""
    if not entry.mig_enabled or not entry.mig_devices:
        return None
    result = plan_gpu(model, [], entry.mig_devices)
    return result.reason if isinstance(result, Infeasible) else None
