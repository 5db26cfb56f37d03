"""What the integrations are told after a run: the node's MIG layout and how the run went.

These types are the whole interface between the apply engine and the
integrations, so nothing here imports the engine or a GPU backend: the
service builds a ``NodeLayout`` from the backend and a ``RunSummary`` from the
apply result and hands both over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MigDeviceInfo:
    """One MIG device: compute instance ``ci_id`` in GPU instance ``gi_id``."""

    gpu_index: int
    gi_id: int
    ci_id: int
    profile: str  # canonical profile name, e.g. "1g.5gb" or "1c.3g.20gb"
    uuid: str  # "MIG-…"


@dataclass(frozen=True)
class GpuLayout:
    """One physical GPU and the MIG devices on it (none when MIG is off).

    ``minor`` is the GPU's device minor number (``/dev/nvidia<minor>``, and the
    ``gpu<minor>`` directory under /proc/driver/nvidia/capabilities). NVML's
    index usually equals it but need not (nvmlDeviceGetMinorNumber exists for
    that reason), so a backend that knows it should pass it; None means "same
    as index".
    """

    index: int
    model: str  # e.g. "A100-SXM4-40GB" or NVML's "NVIDIA A100-SXM4-40GB"
    uuid: str
    mig_enabled: bool
    devices: tuple[MigDeviceInfo, ...] = ()
    minor: int | None = None

    @property
    def device_minor(self) -> int:
        return self.index if self.minor is None else self.minor


@dataclass(frozen=True)
class NodeLayout:
    gpus: tuple[GpuLayout, ...] = ()


@dataclass(frozen=True)
class RunSummary:
    """How the last run went, as the metrics and the SLURM resume need it.

    ``result`` is "ok" for a run that left the node as selected; anything else
    (e.g. "failed", "infeasible", "rebooting") counts as not ok.
    ``changed`` is True when any GPU or compute instance, or a MIG mode, was
    changed by the run: that is what makes a CDI spec stale.
    """

    config: str | None
    matched: bool
    result: str
    duration_s: float
    clients_stopped: int = 0
    operations: Mapping[str, int] = field(default_factory=dict)
    changed: bool = False

    @property
    def ok(self) -> bool:
        return self.result == "ok"
