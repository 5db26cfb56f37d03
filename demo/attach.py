"""``python -m demo.attach PID``: the demo's DCGM stand-in opens
every GPU of the simulated node, as the real DCGM host engine does.

Run from the client unit's ``ExecStartPost=`` with ``$MAINPID``: it records the
PID on each GPU (``SimBackend.attach``). While that process lives, the
simulator refuses a MIG mode change or GPU reset on those GPUs (``IN_USE``),
as the driver does, so the demo shows why migmanagerd stops GPU clients
first; the record lapses by itself when the process exits.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from migmanagerd.gpu.sim import SimBackend

    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m demo.attach PID", file=sys.stderr)
        return 2
    pid = int(argv[0])
    backend = SimBackend()
    for index in range(len(backend.snapshot().gpus)):
        backend.attach(index, pid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
