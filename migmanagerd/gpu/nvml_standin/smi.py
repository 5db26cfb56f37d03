"""A stand-in ``nvidia-smi`` for the NVML stand-in: only ``-r -i IDS``.

    python -m migmanagerd.gpu.nvml_standin.smi --sim-state PATH -r -i 00000000:07:00.0,00000000:0F:00.0

IDS are GPU indices or PCI bus ids, as nvidia-smi takes them. Like the real
tool it refuses while any process holds an NVML session on the node (the
man page: no NVML client may run during a reset), then resets the GPUs
together through the simulator (which refuses while compute processes run).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from migmanagerd.gpu.backend import BackendError
from migmanagerd.gpu.nvml import pci_sysfs_name
from migmanagerd.gpu.nvml_standin.clients import ClientRegistry
from migmanagerd.gpu.sim import SimBackend

IN_USE_EXIT = 255


def _indices(sim: SimBackend, ids: str) -> list[int] | str:
    by_bus = {pci_sysfs_name(g.pci_bus_id): g.index for g in sim.gpus()}
    out = []
    for item in (p.strip() for p in ids.split(",") if p.strip()):
        if item.isdigit() and int(item) < len(by_bus):
            out.append(int(item))
        elif pci_sysfs_name(item) in by_bus:
            out.append(by_bus[pci_sysfs_name(item)])
        else:
            return item
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nvidia-smi (migmanagerd NVML stand-in)")
    ap.add_argument("--sim-state", required=True)
    ap.add_argument("-r", "--gpu-reset", action="store_true", required=True)
    ap.add_argument("-i", "--id", required=True)
    args = ap.parse_args(argv)
    sim = SimBackend(args.sim_state)
    indices = _indices(sim, args.id)
    if isinstance(indices, str):
        print(f"No devices were found matching the ID: {indices}", file=sys.stderr)
        return 6
    names = {g.index: g.pci_bus_id for g in sim.gpus()}
    holders = ClientRegistry(sim.state_path).live()
    if holders:
        for i in indices:
            print(f"GPU {names[i]}: In use by another client", file=sys.stderr)
        print(f"{len(holders)} NVML client(s) are open (pid {', '.join(h.partition('-')[0] for h in holders)}); "
              "stop them before resetting", file=sys.stderr)
        return IN_USE_EXIT
    try:
        sim.reset(indices)
    except BackendError as exc:
        text = "In use by another client" if exc.code == "IN_USE" else exc.code
        print(f"GPU {names.get(exc.gpu_index or indices[0], '?')}: {text} ({exc.detail})", file=sys.stderr)
        return IN_USE_EXIT if exc.code == "IN_USE" else 1
    for i in indices:
        print(f"GPU {names[i]} was successfully reset.")
    print("All done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
