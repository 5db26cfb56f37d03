"""The run's systemd connection, made on first use: a run that changes
nothing needs no D-Bus (and a boot without a bus yet does not wait for one)."""

from __future__ import annotations

from collections.abc import Callable

from migmanagerd.clients.systemd import SystemdManager
from migmanagerd.errors import MigManagerError

Connect = Callable[[], SystemdManager]


def connect_systemd() -> SystemdManager:
    return SystemdManager.connect()


class LazySystemd:
    def __init__(self, connect: Connect = connect_systemd) -> None:
        self._connect = connect
        self._manager: SystemdManager | None = None

    def get(self) -> SystemdManager:
        if self._manager is None:
            self._manager = self._connect()
        return self._manager

    def unit_active(self, unit: str) -> bool:
        """Whether ``unit`` is active; False when systemd cannot say."""
        try:
            return self.get().unit(unit).active_state == "active"
        except MigManagerError:
            return False

    def unit_exists(self, unit: str) -> bool:
        try:
            return self.get().unit(unit).load_state == "loaded"
        except MigManagerError:
            return False

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def unit_by_pid(self, pid: int) -> str | None:
        return self.get().unit_by_pid(pid)
