"""Capability device minors of MIG devices, read from the driver's procfs.

NVIDIA MIG User Guide, "Device Nodes and Capabilities"
(https://docs.nvidia.com/datacenter/tesla/mig-user-guide/device-nodes-and-capabilities.html):
each GPU instance and compute instance has an access capability at
``/proc/driver/nvidia/capabilities/gpu<N>/mig/gi<GI>/access`` and
``.../gi<GI>/ci<CI>/access``; the file holds ``DeviceFileMinor: <minor>`` (and
``DeviceFileMode:``/``DeviceFileModify:`` lines), and with the /dev based
interface the matching device node is ``/dev/nvidia-caps/nvidia-cap<minor>``.
``<N>`` is the GPU's device minor number, not necessarily its NVML index.
NVIDIA's k8s-device-plugin reads the same files with the pattern
``DeviceFileMinor: ([0-9]+)``.

``root`` stands in for ``/`` so tests can build the tree.
"""

from __future__ import annotations

import re
from pathlib import Path

from migmanagerd.errors import MigManagerError

CAPS_DIR = Path("proc/driver/nvidia/capabilities")
CAP_DEVICE_DIR = "/dev/nvidia-caps"
_MINOR = re.compile(r"^DeviceFileMinor:\s*(\d+)\s*$", re.MULTILINE)


class CapabilityError(MigManagerError):
    """A MIG capability file is missing or unreadable: the gres file cannot be trusted."""


def gi_access_path(root: str | Path, gpu_minor: int, gi_id: int) -> Path:
    return Path(root) / CAPS_DIR / f"gpu{gpu_minor}" / "mig" / f"gi{gi_id}" / "access"


def ci_access_path(root: str | Path, gpu_minor: int, gi_id: int, ci_id: int) -> Path:
    return Path(root) / CAPS_DIR / f"gpu{gpu_minor}" / "mig" / f"gi{gi_id}" / f"ci{ci_id}" / "access"


def read_device_minor(path: Path) -> int:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise CapabilityError(f"{path}: no such capability file (is the MIG device present?)") from None
    except OSError as exc:
        raise CapabilityError(f"{path}: cannot read: {exc.strerror or exc}") from None
    m = _MINOR.search(text)
    if m is None:
        raise CapabilityError(f"{path}: no 'DeviceFileMinor: N' line")
    return int(m.group(1))


def cap_device(minor: int) -> str:
    return f"{CAP_DEVICE_DIR}/nvidia-cap{minor}"
