"""The GPU clients a run stops and starts again, journaled in state.json.

Every client stop is journaled BEFORE its stop job is queued, so a run killed
at any point (even while a stop is in flight) leaves the next run a list of
what to start again; units an earlier run left stopped are carried over and
started by this one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from migmanagerd.clients.clientset import ClientsFile
from migmanagerd.clients.notify import Notifier
from migmanagerd.clients.policy import ClientController, StopFailed, stop_decision
from migmanagerd.errors import MigManagerError
from migmanagerd.log import get_logger
from migmanagerd.service.lazy_systemd import LazySystemd
from migmanagerd.service.state import StateStore

log = get_logger("service")


class ClientJournal:
    def __init__(self, store: StateStore, systemd: LazySystemd, notify: Notifier) -> None:
        self.store = store
        self.systemd = systemd
        self.notify = notify
        self.clients: ClientsFile | None = None  # clients.yaml, once loaded: its stop/start timeouts
        self.stopped: list[str] = []  # restart order, this run's and carried over
        self.stopped_count = 0  # stopped by this run (for the metrics)
        self.rebooting = False  # a reboot was requested: leave the clients to the next boot
        self.restart_tried = False

    def carry_over(self, units: Sequence[str]) -> None:
        """Units an earlier run left stopped: this run owes them a start."""
        self.stopped.extend(units)

    def stop(self, config: str, change: str, units: Iterable[str]) -> None:
        """Stop ``units`` (listed in start order) in reverse order, one at a
        time, before a ``change`` ("mode" or "config") of ``config``."""
        todo = [u for u in dict.fromkeys(units) if u not in self.stopped]
        if not todo:
            return
        self.store.begin_journal(config, f"stopping clients before {change} change")
        self.notify.status(f"stopping {len(todo)} GPU client(s) before the {change} change")
        controller = self._controller()
        for unit in reversed(todo):
            try:
                action, _ = stop_decision(self.systemd.get().unit(unit))
            except MigManagerError:
                action = "stop-and-restart"  # unknown: journaling it is the safe side
            if action in ("stop-and-restart", "restart-only"):
                self._note_stopped([unit])
            try:
                report = controller.stop([unit])
            except StopFailed as exc:
                self._settle(unit, exc.report.restart)
                raise
            self._settle(unit, report.restart)
        self.store.set_phase(f"applying {change}")

    def restart(self) -> None:
        """Start every unit owed a start, in order; end the journal when none is left."""
        self.restart_tried = True
        if not self.stopped:
            if self.store.load().state.journal is not None:
                self.store.end_journal()
            return
        if self.rebooting:
            # the units are enabled: the next boot starts them; keep the journal
            # so the next run knows they were stopped on purpose
            return
        units = list(self.stopped)
        self.notify.status(f"restarting {len(units)} GPU client(s)")
        report = self._controller().start(units)
        started = list(report.started) + list(report.enqueued)
        self.store.record_started(started)
        self.stopped = [u for u in self.stopped if u not in started]
        for unit, reason in report.failed:
            log.error("GPU client %s did not start again: %s", unit, reason)
        if not self.stopped:
            self.store.end_journal()
        if report.failed:
            raise MigManagerError(
                "GPU client(s) failed to start again: " + ", ".join(f"{u} ({r})" for u, r in report.failed)
            )

    def _controller(self) -> ClientController:
        if self.clients is None:
            return ClientController(self.systemd.get(), notify=self.notify)
        return ClientController(
            self.systemd.get(), notify=self.notify,
            stop_timeout_s=self.clients.stop_timeout_s, start_timeout_s=self.clients.start_timeout_s,
        )

    def _settle(self, unit: str, restart_order: Sequence[str]) -> None:
        """After ``unit``'s stop: journal it if it needs a start afterwards,
        and forget it if it does not (it was journaled ahead, in case)."""
        if unit in restart_order:
            self._note_stopped([unit])
        elif unit in self.stopped:
            self.store.record_started([unit])
            self.stopped.remove(unit)
            self.stopped_count -= 1

    def _note_stopped(self, restart_order: Sequence[str]) -> None:
        new = [u for u in restart_order if u not in self.stopped]
        if new:
            # the store wants stop order; restart order is its reverse
            self.store.record_stopped(list(reversed(new)))
            self.stopped = new + self.stopped
            self.stopped_count += len(new)
