"""Parsed forms of config.yaml and hooks.yaml (nvidia-mig-parted v1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from migmanagerd.errors import SourceLocation
from migmanagerd.spec.profile import MigProfile

HOOK_NAMES = ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit")


@dataclass(frozen=True)
class DeviceFilter:
    """``0xDDDDVVVV[:0xSSSSVVVV]``: PCI device id (device, vendor) and optional subsystem id."""

    device_id: int  # 32-bit, device << 16 | vendor
    subsystem_id: int | None = None  # 32-bit, subsystem << 16 | subsystem vendor

    def matches(self, pci_device_id: int, pci_subsystem_id: int | None) -> bool:
        if pci_device_id != self.device_id:
            return False
        return self.subsystem_id is None or self.subsystem_id == pci_subsystem_id

    def __str__(self) -> str:
        base = f"0x{self.device_id:08X}"
        return base if self.subsystem_id is None else f"{base}:0x{self.subsystem_id:08X}"


@dataclass(frozen=True)
class PinnedInstance:
    """One GPU instance at an exact placement, with its compute instances.

    Only ``restore`` makes these (from a checkpoint file); a config file
    cannot: there the planner chooses placements.
    """

    gi_profile: str  # canonical GI profile name, e.g. "3g.20gb"
    start: int  # memory-slice placement
    cis: tuple[tuple[str, int | None], ...]  # (canonical CI profile name, compute-slice start or None), creation order


@dataclass(frozen=True)
class ConfigEntry:
    """One list item of a config: which GPUs, MIG on/off, which MIG devices."""

    config: str  # the config's name
    position: int  # 0-based index of the entry in the config's list
    devices: Literal["all"] | tuple[int, ...]
    device_filters: tuple[DeviceFilter, ...]  # empty: any device
    mig_enabled: bool
    mig_devices: tuple[tuple[MigProfile, int], ...]  # file order, zero counts dropped
    loc: SourceLocation
    # restore only: this exact layout instead of a planned one (None: plan it)
    layout: tuple[PinnedInstance, ...] | None = None

    def selects(self, index: int, pci_device_id: int, pci_subsystem_id: int | None) -> bool:
        if self.devices != "all" and index not in self.devices:
            return False
        if not self.device_filters:
            return True
        return any(f.matches(pci_device_id, pci_subsystem_id) for f in self.device_filters)

    @property
    def where(self) -> str:
        return f"{self.loc}: config '{self.config}' entry {self.position}"


@dataclass(frozen=True)
class MigConfig:
    name: str
    entries: tuple[ConfigEntry, ...]
    loc: SourceLocation


@dataclass(frozen=True)
class ConfigFile:
    path: str
    configs: dict[str, MigConfig]  # file order


@dataclass(frozen=True)
class HookSpec:
    command: str
    args: tuple[str, ...]
    envs: dict[str, str]
    workdir: str | None
    loc: SourceLocation


@dataclass(frozen=True)
class HooksFile:
    path: str
    hooks: dict[str, tuple[HookSpec, ...]]  # keyed by HOOK_NAMES; absent hooks -> ()

    def get(self, name: str) -> tuple[HookSpec, ...]:
        return self.hooks.get(name, ())
