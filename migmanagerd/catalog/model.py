"""Typed view of the MIG geometry catalog (the data is in ``models.yaml``).

Vocabulary (MIG user guide, "concepts"): a GPU has ``compute_slices`` SM
slices and ``memory_slices`` memory slices. A GPU-instance (GI) profile takes
``compute_slices`` and ``memory_slices`` of them; it may only start at one of
its ``placements`` (memory-slice index) and occupies ``memory_slices`` slices
from there. A compute-instance (CI) profile takes part of its GI's compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NVIDIA_VENDOR_ID = 0x10DE


@dataclass(frozen=True, order=True)
class Placement:
    """A GPU-instance placement in memory slices: ``[start, start+size)``."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def mask(self) -> int:
        """Bit i set for each memory slice i this placement occupies."""
        return ((1 << self.size) - 1) << self.start

    def overlaps(self, other: Placement) -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class CiProfile:
    """A compute-instance profile inside a GI profile (``1c.3g.20gb``)."""

    name: str  # canonical, e.g. "1c.3g.20gb"; equals the GI name for the full CI
    nvml_id: int  # NVML_COMPUTE_INSTANCE_PROFILE_* value
    compute_slices: int
    max_count: int  # how many fit in one GI
    placements: tuple[int, ...] = ()  # starts over the GI's compute slices


@dataclass(frozen=True)
class GiProfile:
    """A GPU-instance profile of one GPU model."""

    name: str  # canonical, e.g. "1g.5gb+me"
    nvml_id: int  # device profile ID (nvidia-smi's ID column, info.id in NVML)
    selector: int  # NVML_GPU_INSTANCE_PROFILE_* value that returns it
    compute_slices: int
    memory_slices: int
    memory_mib: int
    max_count: int
    placements: tuple[int, ...]  # legal start memory slices (size = memory_slices)
    attributes: tuple[str, ...] = ()  # e.g. ("+me",)
    sm_count: int | None = None
    ci_profiles: tuple[CiProfile, ...] = ()
    confirmed: bool = True  # False: inferred, see the data file's notes
    notes: str = ""
    # earlier names of this profile (same device id), e.g. pre-production
    # names configs still use; accepted and read as this profile
    former_names: tuple[str, ...] = ()

    def placement(self, start: int) -> Placement:
        return Placement(start, self.memory_slices)

    def ci_profile(self, name: str) -> CiProfile | None:
        for ci in self.ci_profiles:
            if ci.name == name:
                return ci
        return None

    @property
    def full_ci(self) -> CiProfile | None:
        """The compute instance that spans the whole GI (nvidia-smi's default)."""
        for ci in self.ci_profiles:
            if ci.compute_slices == self.compute_slices:
                return ci
        return None


@dataclass(frozen=True)
class GpuModel:
    """One GPU model's MIG geometry."""

    name: str  # catalog name, e.g. "A100-SXM4-40GB"
    product_names: tuple[str, ...]  # NVML device names, e.g. "NVIDIA A100-SXM4-40GB"
    device_ids: tuple[int, ...]  # PCI device ids (e.g. 0x20B0); vendor is NVIDIA
    compute_slices: int
    memory_slices: int
    memory_mib: int
    gi_profiles: tuple[GiProfile, ...]
    aliases: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    notes: str = ""
    # profiles that cannot coexist on one GPU, as groups of GI profile names
    exclusive_groups: tuple[tuple[str, ...], ...] = field(default=())
    # MIG user guide, "persistence": Ampere keeps MIG mode in the InfoROM (it
    # survives reboot) and enabling it takes a GPU reset; Hopper and later keep
    # it in the driver only (lost on reboot or driver reload), no reset needed.
    mig_mode_persistent: bool = True
    mig_mode_needs_reset: bool = True

    def gi_profile(self, name: str) -> GiProfile | None:
        """The profile by its name, or by a former name (``former_names``)."""
        for p in self.gi_profiles:
            if p.name == name:
                return p
        for p in self.gi_profiles:
            if name in p.former_names:
                return p
        return None

    def gi_profile_by_id(self, nvml_id: int) -> GiProfile | None:
        for p in self.gi_profiles:
            if p.nvml_id == nvml_id:
                return p
        return None

    @property
    def pci_ids(self) -> tuple[int, ...]:
        """32-bit PCI ids as nvidia-mig-parted's device-filter writes them (0xDDDDVVVV)."""
        return tuple((d << 16) | NVIDIA_VENDOR_ID for d in self.device_ids)
