"""The demo's throwaway node: files, units and the simulated GPUs.

Layout under ``<tmp>/node`` (``MIGMANAGERD_ROOT``), mirroring a real node::

    etc/nvidia-mig-manager/{config,hooks,clients}.yaml     the project's config/ files
    etc/systemd/system/nvidia-mig-manager.service.d/
        override.conf                                      the selector (config/override.conf: all-disabled)
        demo.conf                                          ExecStart at this checkout, sim backend, private bus
    usr/lib/systemd/system/                                this checkout's units, and the GPU clients
    var/lib/nvidia-mig-manager/                            state.json (0700, as StateDirectoryMode)
    proc/sys/kernel/random/boot_id                         a fake boot id, renewed by the simulated reboot

plus ``sim.json`` (the simulated 8xA100-SXM4-40GB node), ``service.log``
(the unit's output: there is no journald in the demo) and ``hooks.log``.
Directories are 0755 and files 0644: migmanagerd refuses operator files that
group or others could write (spec/trust.py).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout: demo/ is at its top
SERVICE = "nvidia-mig-manager.service"
TARGET = "nvidia-gpu-reset.target"
SIM_NODE = "8xA100-SXM4-40GB"
# Small per-operation delays so progress (StatusText) is visible while the
# unit runs; a real A100 reset takes a few seconds too.
SIM_LATENCY = "set_mode=0.2,reset=1.5,create_gi=0.1,create_ci=0.05,destroy_ci=0.05,destroy_gi=0.05"

# The GPU clients, as a DGX node has them: DCGM ordered after the target (the
# drop-in docs/units.md tells operators to add), the exporter after DCGM (so
# only transitively after the target), kubelet after the target. All three
# are listed in the shipped config/clients.yaml.
CLIENTS = ("nvidia-dcgm.service", "dcgm-exporter.service", "kubelet.service")
_CLIENT_UNITS = {
    "nvidia-dcgm.service": (
        "[Unit]\nDescription=NVIDIA DCGM host engine (demo stand-in)\n"
        f"Wants={TARGET}\nAfter={TARGET}\n"
    ),
    "dcgm-exporter.service": (
        "[Unit]\nDescription=DCGM exporter (demo stand-in)\n"
        "Requires=nvidia-dcgm.service\nAfter=nvidia-dcgm.service\n"
    ),
    "kubelet.service": (
        "[Unit]\nDescription=kubelet (demo stand-in)\n"
        f"Wants={TARGET}\nAfter={TARGET}\n"
    ),
}
_CLIENT_SERVICE = "[Service]\nExecStart=/bin/sleep infinity\n"
_CLIENT_INSTALL = "[Install]\nWantedBy=default.target\n"
# DCGM holds every GPU open while it runs: the stand-in records its PID on
# each simulated GPU (demo/attach.py), so a reset under it would
# fail with IN_USE and migmanagerd finds it as a GPU holder.
GPU_HOLDER = "nvidia-dcgm.service"

# 3 x 3g.20gb needs 12 of an A100-40GB's 8 memory slices: it cannot fit.
UNFIT_CONFIG = "demo-3x3g.20gb"
UNFIT_CONFIG_YAML = f"""
  # Added by the demo: does not fit an A100-40GB (3 x 4 memory slices > 8).
  {UNFIT_CONFIG}:
    - devices: all
      mig-enabled: true
      mig-devices:
        "3g.20gb": 3
"""

HOOKS_YAML = """\
# The demo's hooks: one visible line at the start and at the end of a change.
version: v1
hooks:
  apply-start:
    - command: /bin/sh
      args: ["-c", "echo \\"hook apply-start: applying '$MIG_PARTED_SELECTED_CONFIG'\\" | tee -a {log}"]
  apply-exit:
    - command: /bin/sh
      args: ["-c", "echo \\"hook apply-exit: done with '$MIG_PARTED_SELECTED_CONFIG'\\" | tee -a {log}"]
"""


def missing_checkout_files() -> str | None:
    """The demo installs THIS checkout's units and config/ files; an installed
    package has no checkout beside it."""
    for rel in ("config/config.yaml", "config/clients.yaml", "config/override.conf",
                f"systemd/{SERVICE}", f"systemd/{TARGET}"):
        if not (REPO / rel).is_file():
            return f"{REPO / rel} not found: run the demo from a source checkout (make demo)"
    return None


class DemoNode:
    def __init__(self, base: Path, bus: str) -> None:
        self.base = base
        self.root = base / "node"
        self.bus = bus
        self.etc = self.root / "etc" / "nvidia-mig-manager"
        self.etc_units = self.root / "etc" / "systemd" / "system"
        self.lib_units = self.root / "usr" / "lib" / "systemd" / "system"
        self.dropin_dir = self.etc_units / f"{SERVICE}.d"
        self.state_dir = self.root / "var" / "lib" / "nvidia-mig-manager"
        self.boot_id_file = self.root / "proc" / "sys" / "kernel" / "random" / "boot_id"
        self.sim_state = self.root / "sim.json"
        self.service_log = self.root / "service.log"
        self.hooks_log = self.root / "hooks.log"

    @property
    def unit_path(self) -> list[Path]:
        """Where the user manager looks for units, first match wins (as /etc before /usr/lib)."""
        return [self.etc_units, self.lib_units]

    @property
    def env(self) -> dict[str, str]:
        """What both the unit and the demo's migmanagerd commands run with."""
        return {
            "PYTHONPATH": str(REPO),
            "MIGMANAGERD_BACKEND": "sim",
            "MIGMANAGERD_SIM_STATE": str(self.sim_state),
            "MIGMANAGERD_SIM_NODE": SIM_NODE,
            "MIGMANAGERD_ROOT": str(self.root),
            "DBUS_SYSTEM_BUS_ADDRESS": self.bus,
        }

    # --- building it ----------------------------------------------------------

    def build(self) -> None:
        for d in (self.root, self.etc, self.dropin_dir, self.lib_units, self.boot_id_file.parent):
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
        for d in [self.root, *self.root.rglob("*")]:
            if d.is_dir():
                os.chmod(d, 0o755)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)

        config = REPO / "config"
        self._write(self.etc / "config.yaml", (config / "config.yaml").read_text())
        self._write(self.etc / "clients.yaml", (config / "clients.yaml").read_text())
        self._write(self.etc / "hooks.yaml", HOOKS_YAML.format(log=self.hooks_log))
        self._write(self.dropin_dir / "override.conf", (config / "override.conf").read_text())
        self._write(self.dropin_dir / "demo.conf", self.demo_dropin())

        for unit in (SERVICE, TARGET):
            self._write(self.lib_units / unit, (REPO / "systemd" / unit).read_text())
        for unit, head in _CLIENT_UNITS.items():
            service = _CLIENT_SERVICE
            if unit == GPU_HOLDER:
                service += (
                    f'Environment="PYTHONPATH={REPO}" "MIGMANAGERD_SIM_STATE={self.sim_state}"\n'
                    f"ExecStartPost={sys.executable} -m demo.attach $MAINPID\n"
                )
            self._write(self.lib_units / unit, head + service + _CLIENT_INSTALL)
        self.new_boot_id()

    def demo_dropin(self) -> str:
        env = " ".join(f'"{k}={v}"' for k, v in sorted(self.env.items()))
        return (
            "# Written by the migmanagerd demo: run this checkout on a simulated node.\n"
            "[Service]\n"
            "ExecStart=\n"
            f"ExecStart={sys.executable} -m migmanagerd service\n"
            f"Environment={env}\n"
            "# The node root, the private bus socket and the sim state live in the\n"
            "# demo's directory under /tmp; a private /tmp would hide all three.\n"
            "PrivateTmp=no\n"
            "# A user manager would create the state directory under its own\n"
            "# ~/.config instead of /var/lib; the demo's is in the node root.\n"
            "StateDirectory=\n"
            "# No journald runs beside the private manager: keep the unit's\n"
            "# output (what `journalctl -u nvidia-mig-manager` shows on a node).\n"
            f"StandardOutput=append:{self.service_log}\n"
            f"StandardError=append:{self.service_log}\n"
        )

    def append_unfit_config(self) -> str:
        path = self.etc / "config.yaml"
        text = path.read_text()
        if not text.endswith("\n"):
            text += "\n"
        self._write(path, text + UNFIT_CONFIG_YAML)
        return UNFIT_CONFIG_YAML.strip("\n")

    def new_boot_id(self) -> str:
        boot = str(uuid.uuid4())
        self._write(self.boot_id_file, boot + "\n")
        return boot

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.write_text(text)
        os.chmod(path, 0o644)

    # --- reading it -------------------------------------------------------------

    def read_log(self, path: Path, offset: int) -> tuple[list[str], int]:
        """Lines appended to ``path`` since ``offset``; journal priority
        prefixes (``<6>``) stripped as journald would."""
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        lines = []
        for line in data.decode(errors="replace").splitlines():
            if len(line) > 3 and line[0] == "<" and line[2] == ">" and line[1].isdigit():
                line = line[3:]
            lines.append(line)
        return lines, offset + len(data)

    def log_size(self, path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0
