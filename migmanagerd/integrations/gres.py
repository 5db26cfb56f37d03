"""Slurm GRES lines for the node's GPUs and MIG devices (pure, apart from nvcaps reads).

One ``Name=gpu`` line per schedulable device, as gres.conf(5) describes:
a MIG device is typed by its profile, a GPU outside MIG mode by its model.
The device files come from the MIG capability minors (see nvcaps.py):

* ``mig_files: cap`` — ``File=/dev/nvidia-caps/nvidia-cap<CI minor>``;
* ``mig_files: parent-and-caps`` — ``MultipleFiles=/dev/nvidia<G>,<GI cap>,<CI cap>``,
  the set Slurm's own AutoDetect=nvml produces for a MIG device, which a job's
  device cgroup needs (ConstrainDevices=yes) for CUDA to open it; gres.conf(5)
  documents MultipleFiles from Slurm 21.08 on.

Type names: Slurm's gres.html (MIG Management) shows MIG types such as
``a100_3g.20gb``. ':' and ',' separate the fields of a Gres= specification,
'=' separates key and value and whitespace separates gres.conf parameters, so
those cannot appear; everything outside ``[a-z0-9._+-]`` becomes '_' and names
are lower-cased: ``1g.10gb+me`` stays (Slurm 22.05's slurmd, slurmctld and
``sbatch --gres=gpu:1g.10gb+me:1`` accept it: tests/test_integrations_slurm_real.py),
``1g.20gb+gfx,me`` -> ``1g.20gb+gfx_me``, ``NVIDIA A100-SXM4-40GB`` -> ``a100-sxm4-40gb``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from migmanagerd.integrations import nvcaps
from migmanagerd.integrations.layout import GpuLayout, NodeLayout

_UNSAFE = re.compile(r"[^a-z0-9._+-]")


def slurm_type(name: str) -> str:
    """A Slurm GRES type name for a MIG profile or a GPU model name."""
    text = name.strip().lower()
    if text.startswith("nvidia "):
        # NVML product names carry the vendor; a cluster's types do not need it
        text = text[len("nvidia "):]
    text = _UNSAFE.sub("_", text.strip())
    if not text:
        raise ValueError(f"no usable Slurm type name in {name!r}")
    return text


@dataclass(frozen=True)
class GresDevice:
    """One schedulable GPU device: its type and the device files a job needs."""

    type: str
    files: tuple[str, ...]
    gpu_index: int
    source: str  # the MIG device UUID or the GPU UUID, for the reader of the file

    def conf_line(self) -> str:
        if len(self.files) == 1:
            return f"Name=gpu Type={self.type} File={self.files[0]}"
        return f"Name=gpu Type={self.type} MultipleFiles={','.join(self.files)}"


def gres_devices(layout: NodeLayout, *, root: str | Path = "/", mig_files: str = "cap") -> tuple[GresDevice, ...]:
    """The node's devices in GPU-index order; raises CapabilityError if a cap file is missing."""
    out: list[GresDevice] = []
    for gpu in sorted(layout.gpus, key=lambda g: g.index):
        if gpu.mig_enabled:
            out.extend(_mig_devices(gpu, root, mig_files))
        else:
            out.append(GresDevice(slurm_type(gpu.model), (f"/dev/nvidia{gpu.device_minor}",), gpu.index, gpu.uuid))
    return tuple(out)


def _mig_devices(gpu: GpuLayout, root: str | Path, mig_files: str) -> list[GresDevice]:
    out = []
    for dev in sorted(gpu.devices, key=lambda d: (d.gi_id, d.ci_id)):
        ci_minor = nvcaps.read_device_minor(nvcaps.ci_access_path(root, gpu.device_minor, dev.gi_id, dev.ci_id))
        if mig_files == "parent-and-caps":
            gi_minor = nvcaps.read_device_minor(nvcaps.gi_access_path(root, gpu.device_minor, dev.gi_id))
            files: tuple[str, ...] = (
                f"/dev/nvidia{gpu.device_minor}", nvcaps.cap_device(gi_minor), nvcaps.cap_device(ci_minor),
            )
        else:
            files = (nvcaps.cap_device(ci_minor),)
        out.append(GresDevice(slurm_type(dev.profile), files, gpu.index, dev.uuid))
    return out


def gres_counts(devices: tuple[GresDevice, ...]) -> dict[str, int]:
    """Devices per type, in order of first appearance (GPU index order)."""
    counts: dict[str, int] = {}
    for dev in devices:
        counts[dev.type] = counts.get(dev.type, 0) + 1
    return counts


def nodename_gres(devices: tuple[GresDevice, ...]) -> str:
    """The value for slurm.conf's NodeName ``Gres=``, e.g. ``gpu:1g.5gb:7,gpu:a100-sxm4-40gb:1``."""
    return ",".join(f"gpu:{t}:{n}" for t, n in gres_counts(devices).items())


def render_gres_conf(devices: tuple[GresDevice, ...], *, config: str | None) -> str:
    lines = [
        "# Written by migmanagerd after each MIG change; edits here are overwritten.",
        f"# MIG config: {config or '(none selected)'}",
    ]
    for dev in devices:
        lines.append(f"# GPU {dev.gpu_index} {dev.source}")
        lines.append(dev.conf_line())
    return "\n".join(lines) + "\n"


def render_nodename_fragment(devices: tuple[GresDevice, ...]) -> str:
    """One line, ``Gres=…``, for configuration management to splice into the NodeName line."""
    value = nodename_gres(devices)
    return f"Gres={value}\n" if value else ""
