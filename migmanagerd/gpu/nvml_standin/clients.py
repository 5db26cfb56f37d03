"""Which processes hold an NVML session on a simulated node.

A real driver knows its clients; the stand-in, living in each client
process, records them as files ``<state>.nvml-clients/<pid>-<token>`` so the
stand-in ``nvidia-smi -r`` (another process) can refuse a reset while any is
open, as the real one does. A client that died without shutting down is
ignored (its pid is gone).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from migmanagerd.gpu.sim import pid_alive


class ClientRegistry:
    def __init__(self, state_path: Path) -> None:
        self.dir = state_path.with_name(state_path.name + ".nvml-clients")
        self._mine = f"{os.getpid()}-{id(self):x}"

    def register(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._mine = f"{os.getpid()}-{id(self):x}"  # after a fork, a new pid
        (self.dir / self._mine).touch()

    def unregister(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / self._mine).unlink()

    def live(self) -> list[str]:
        """Every open session on this node, as ``pid-token``."""
        try:
            names = sorted(p.name for p in self.dir.iterdir())
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            pid = name.partition("-")[0]
            if pid.isdigit() and pid_alive(int(pid)):
                out.append(name)
        return out

    def others(self) -> list[str]:
        return [n for n in self.live() if n != self._mine]
