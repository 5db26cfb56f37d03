"""Slurm GRES output for simulated layouts, read against a hand-built fake procfs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from migmanagerd.integrations import nvcaps
from migmanagerd.integrations.gres import (
    gres_devices,
    nodename_gres,
    render_gres_conf,
    render_nodename_fragment,
    slurm_type,
)
from migmanagerd.integrations.layout import GpuLayout, MigDeviceInfo, NodeLayout
from migmanagerd.integrations.settings import SlurmSettings
from migmanagerd.integrations.slurm import write_gres_files


def write_cap(root: Path, rel: str, minor: int) -> None:
    """One capability file as the driver presents it (MIG user guide, Device Nodes and Capabilities)."""
    path = root / "proc/driver/nvidia/capabilities" / rel / "access"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"DeviceFileMinor: {minor}\nDeviceFileMode: 292\nDeviceFileModify: 1\n")


def mig(gpu: int, gi: int, ci: int, profile: str) -> MigDeviceInfo:
    return MigDeviceInfo(gpu, gi, ci, profile, f"MIG-{gpu}-{gi}-{ci}")


# GPU 0: MIG, one 3g.20gb and two 1g.5gb; GPU 1: MIG off; GPU 2 (device minor 3): MIG,
# a 1c.3g.20gb compute instance and a 1g.10gb+me.
LAYOUT = NodeLayout((
    GpuLayout(0, "A100-SXM4-40GB", "GPU-aaa", True, (mig(0, 9, 0, "1g.5gb"), mig(0, 1, 0, "3g.20gb"),
                                                      mig(0, 10, 0, "1g.5gb"))),
    GpuLayout(1, "NVIDIA A100-SXM4-40GB", "GPU-bbb", False),
    GpuLayout(2, "A100-SXM4-80GB", "GPU-ccc", True, (mig(2, 2, 0, "1c.3g.20gb"), mig(2, 13, 0, "1g.10gb+me")),
              minor=3),
))

CAPS = {
    "gpu0/mig/gi1": 12, "gpu0/mig/gi1/ci0": 13,
    "gpu0/mig/gi9": 84, "gpu0/mig/gi9/ci0": 85,
    "gpu0/mig/gi10": 93, "gpu0/mig/gi10/ci0": 94,
    "gpu3/mig/gi2": 426, "gpu3/mig/gi2/ci0": 427,
    "gpu3/mig/gi13": 525, "gpu3/mig/gi13/ci0": 526,
}


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    for rel, minor in CAPS.items():
        write_cap(r, rel, minor)
    return r


def test_cap_files_give_one_line_per_mig_device_and_per_full_gpu(root):
    devices = gres_devices(LAYOUT, root=root)
    assert [d.conf_line() for d in devices] == [
        "Name=gpu Type=3g.20gb File=/dev/nvidia-caps/nvidia-cap13",
        "Name=gpu Type=1g.5gb File=/dev/nvidia-caps/nvidia-cap85",
        "Name=gpu Type=1g.5gb File=/dev/nvidia-caps/nvidia-cap94",
        "Name=gpu Type=a100-sxm4-40gb File=/dev/nvidia1",
        "Name=gpu Type=1c.3g.20gb File=/dev/nvidia-caps/nvidia-cap427",
        "Name=gpu Type=1g.10gb+me File=/dev/nvidia-caps/nvidia-cap526",
    ]
    assert nodename_gres(devices) == (
        "gpu:3g.20gb:1,gpu:1g.5gb:2,gpu:a100-sxm4-40gb:1,gpu:1c.3g.20gb:1,gpu:1g.10gb+me:1"
    )
    assert render_nodename_fragment(devices) == "Gres=" + nodename_gres(devices) + "\n"


def test_parent_and_caps_lists_the_gpu_gi_and_ci_devices(root):
    devices = gres_devices(LAYOUT, root=root, mig_files="parent-and-caps")
    lines = [d.conf_line() for d in devices]
    assert lines[0] == "Name=gpu Type=3g.20gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap12,/dev/nvidia-caps/nvidia-cap13"
    assert lines[3] == "Name=gpu Type=a100-sxm4-40gb File=/dev/nvidia1"
    # the GPU with device minor 3 is /dev/nvidia3 and gpu3 in procfs, whatever its NVML index
    assert lines[4] == "Name=gpu Type=1c.3g.20gb MultipleFiles=/dev/nvidia3,/dev/nvidia-caps/nvidia-cap426,/dev/nvidia-caps/nvidia-cap427"


def test_gres_conf_text_names_config_and_sources(root):
    text = render_gres_conf(gres_devices(LAYOUT, root=root), config="mixed")
    assert "# MIG config: mixed" in text
    assert "# GPU 0 MIG-0-1-0\nName=gpu Type=3g.20gb File=/dev/nvidia-caps/nvidia-cap13\n" in text
    assert all(line.startswith(("#", "Name=gpu ")) for line in text.splitlines())


def test_missing_cap_file_is_an_error_naming_the_path(root):
    (root / "proc/driver/nvidia/capabilities/gpu0/mig/gi10/ci0/access").unlink()
    with pytest.raises(nvcaps.CapabilityError, match=r"gpu0/mig/gi10/ci0/access: no such capability file"):
        gres_devices(LAYOUT, root=root)


def test_cap_file_without_minor_is_an_error(root):
    (root / "proc/driver/nvidia/capabilities/gpu0/mig/gi1/ci0/access").write_text("DeviceFileMode: 292\n")
    with pytest.raises(nvcaps.CapabilityError, match="no 'DeviceFileMinor: N' line"):
        gres_devices(LAYOUT, root=root)


@pytest.mark.parametrize("name, expected", [
    ("1g.5gb", "1g.5gb"),
    ("1c.3g.20gb", "1c.3g.20gb"),
    ("1g.10gb+me", "1g.10gb+me"),
    ("1g.20gb+gfx,me", "1g.20gb+gfx_me"),
    ("1g.10gb-me", "1g.10gb-me"),
    ("1g.20gb+me.all", "1g.20gb+me.all"),
    ("NVIDIA H100 80GB HBM3", "h100_80gb_hbm3"),
    ("A100-SXM4-40GB", "a100-sxm4-40gb"),
    ("a:b,c=d", "a_b_c_d"),
])
def test_slurm_type_names(name, expected):
    assert slurm_type(name) == expected


def test_gpus_without_devices_write_an_empty_fragment(root):
    layout = NodeLayout((GpuLayout(0, "A100-SXM4-40GB", "GPU-aaa", True, ()),))
    devices = gres_devices(layout, root=root)
    assert devices == () and render_nodename_fragment(devices) == ""


def test_files_written_atomically_and_change_detected(root, tmp_path):
    settings = SlurmSettings(enabled=True, gres_file=str(tmp_path / "etc/gres.conf"),
                             nodename_file=str(tmp_path / "etc/frag"), root=str(root))
    first = write_gres_files(settings, LAYOUT, "mixed")
    assert first["files_changed"] and first["gres_changed"] and first["devices"] == 6
    gres_text = Path(settings.gres_file).read_text()
    assert "Name=gpu Type=1g.10gb+me File=/dev/nvidia-caps/nvidia-cap526" in gres_text
    assert Path(settings.nodename_file).read_text() == f"Gres={first['gres']}\n"
    assert stat.S_IMODE(os.stat(settings.gres_file).st_mode) == 0o644
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["frag", "gres.conf"]  # no temp files left
    again = write_gres_files(settings, LAYOUT, "mixed")
    assert not again["files_changed"]
