"""Stopping GPU clients before a MIG change and starting them again after.

Stop: units are stopped in REVERSE of the listed order (the list is in start
order, like clients.yaml), and the report says exactly which units to start
afterwards, in start order. A unit is brought back when it was running, or
would have been running: active, activating or reloading units are stopped and
restarted; failed units and inactive-but-enabled long-running units are not
stopped (nothing runs) but are started afterwards, so the node comes back as
if the GPUs had been ready all along.

Start, and the deadlock it must avoid: ``nvidia-mig-manager.service`` is a
oneshot ordered ``Before=nvidia-gpu-reset.target`` and GPU clients order
themselves ``After=`` that target. While the oneshot runs, the target (and
thus any unit ordered after it) cannot start until the oneshot finishes. A
start job for such a unit, waited for from inside the oneshot, would wait for
the oneshot itself: a deadlock broken only by a timeout. So such units are
only *queued* (a start job systemd runs once the oneshot is done), and so is
every unit while the target is not yet active (at boot nothing the oneshot
starts should be waited for). A unit ordered ``After=`` the oneshot itself
(directly or through a chain of After= dependencies) waits for it just the
same, so it is queued too. Every other unit is started and waited for, so its
failure is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from migmanagerd.clients.notify import Notifier
from migmanagerd.clients.systemd import SystemdError, SystemdManager, UnitState
from migmanagerd.errors import MigManagerError
from migmanagerd.log import get_logger

log = get_logger("clients")

GPU_RESET_TARGET = "nvidia-gpu-reset.target"
# The oneshot that runs us: a start job of a unit ordered after it waits for
# the run that would wait for that job.
MANAGER_SERVICE = "nvidia-mig-manager.service"
# A walk through After= chains visits the whole "before" cone of a unit
# (basic.target, sysinit.target, mounts…); bounded so a huge or odd graph
# cannot stall the boot. Past the bound the unit is treated as ordered after
# the target: queuing is always safe, waiting might not be.
MAX_AFTER_WALK = 2048
# Seconds added to a job timeout when asking systemd for more start time, to
# cover the D-Bus round trips around the job.
EXTEND_MARGIN_S = 30

RUNNING_STATES = ("active", "activating", "reloading")


@dataclass(frozen=True)
class StopReport:
    stopped: tuple[str, ...]  # units actually stopped, in stop order
    restart: tuple[str, ...]  # units to start afterwards, in start order
    skipped: tuple[tuple[str, str], ...]  # (unit, why it is neither stopped nor restarted)


@dataclass(frozen=True)
class StartReport:
    started: tuple[str, ...]  # started and waited for: now active
    enqueued: tuple[str, ...]  # start job queued, not waited for
    failed: tuple[tuple[str, str], ...]  # (unit, reason)
    # (unit, why): owed a start but uninstalled or masked since; nothing to
    # start, so not a failure (a journal holding it must not fail every boot)
    dropped: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


class StopFailed(MigManagerError):
    """Stopping a client failed. ``report`` holds what was already stopped;
    its ``restart`` list includes the unit that failed to stop, so starting
    ``report.restart`` puts the node back as it was."""

    def __init__(self, unit: str, cause: Exception, report: StopReport) -> None:
        self.unit = unit
        self.cause = cause
        self.report = report
        super().__init__(f"cannot stop GPU client {unit}: {cause}")


class ClientController:
    def __init__(
        self,
        manager: SystemdManager,
        notify: Notifier | None = None,
        stop_timeout_s: float = 90,
        start_timeout_s: float = 90,
        *,
        gpu_reset_target: str = GPU_RESET_TARGET,
        manager_service: str = MANAGER_SERVICE,
        max_after_walk: int = MAX_AFTER_WALK,
    ) -> None:
        self._manager = manager
        self._notify = notify or Notifier(None)
        self.stop_timeout_s = stop_timeout_s
        self.start_timeout_s = start_timeout_s
        self.gpu_reset_target = gpu_reset_target
        self.manager_service = manager_service
        self.max_after_walk = max_after_walk

    # --- stop ---------------------------------------------------------------

    def stop(self, units: Sequence[str]) -> StopReport:
        listed = _unique(units)
        stopped: list[str] = []
        restart: set[str] = set()
        skipped: list[tuple[str, str]] = []

        def report() -> StopReport:
            return StopReport(
                stopped=tuple(stopped),
                restart=tuple(u for u in listed if u in restart),
                skipped=tuple(skipped),
            )

        for unit in reversed(listed):
            try:
                state = self._manager.unit(unit)
            except SystemdError as exc:
                raise StopFailed(unit, exc, report()) from None
            action, reason = stop_decision(state)
            if action == "skip":
                log.info("not stopping %s: %s", unit, reason)
                skipped.append((unit, reason))
                continue
            if action == "restart-only":
                log.info("%s is %s; will start it afterwards", unit, reason)
                restart.add(unit)
                continue
            self._notify.status(f"stopping GPU client {unit}")
            self._notify.extend_timeout(self.stop_timeout_s + EXTEND_MARGIN_S)
            if action == "stop-and-restart":
                restart.add(unit)
            try:
                self._manager.stop(unit, self.stop_timeout_s)
            except SystemdError as exc:
                log.error("stopping %s failed: %s", unit, exc)
                raise StopFailed(unit, exc, report()) from None
            stopped.append(unit)
            if action == "stop-only":
                log.info("stopped %s; %s", unit, reason)
                skipped.append((unit, reason))
            else:
                log.info("stopped %s", unit)
        return report()

    # --- start --------------------------------------------------------------

    def start(self, units: Sequence[str]) -> StartReport:
        started: list[str] = []
        enqueued: list[str] = []
        failed: list[tuple[str, str]] = []
        dropped: list[tuple[str, str]] = []
        listed = _unique(units)
        if not listed:
            return StartReport((), (), ())
        gate = self._gate()
        walker = _AfterWalker(self._manager, self.gpu_reset_target, self.max_after_walk, (self.manager_service,))
        for unit in listed:
            gone = self._gone(unit)
            if gone:
                log.warning("not starting GPU client %s again: it is %s now; dropped from the journal", unit, gone)
                dropped.append((unit, gone))
                continue
            why_queue = gate or walker.why_ordered_after(unit)
            try:
                if why_queue:
                    self._manager.enqueue_start(unit)
                    log.info("enqueued %s (%s)", unit, why_queue)
                    enqueued.append(unit)
                else:
                    log.info("waiting for %s", unit)
                    self._notify.status(f"starting GPU client {unit}")
                    self._notify.extend_timeout(self.start_timeout_s + EXTEND_MARGIN_S)
                    self._manager.start(unit, self.start_timeout_s)
                    started.append(unit)
            except SystemdError as exc:
                log.error("starting %s failed: %s", unit, exc)
                failed.append((unit, str(exc)))
        return StartReport(tuple(started), tuple(enqueued), tuple(failed), tuple(dropped))

    def _gone(self, unit: str) -> str:
        """"not-found" or "masked" when ``unit`` cannot be started any more
        (removed or masked by the operator since it was stopped), else ""."""
        try:
            state = self._manager.unit(unit)
        except SystemdError:
            return ""  # unknown: try the start, which reports what is wrong
        return state.load_state if state.load_state in ("not-found", "masked") else ""

    def _gate(self) -> str:
        """Why every start must only be queued now, or "" when none need be."""
        try:
            target = self._manager.unit(self.gpu_reset_target)
        except SystemdError as exc:
            log.warning("cannot read %s (%s); queuing every start", self.gpu_reset_target, exc)
            return f"state of {self.gpu_reset_target} unknown"
        if target.load_state == "not-found":
            # No such target on this node: nothing can wait on it.
            log.debug("%s is not installed; starting clients and waiting for them", self.gpu_reset_target)
            return ""
        if target.active_state != "active":
            return f"{self.gpu_reset_target} not yet active"
        return ""


def stop_decision(state: UnitState) -> tuple[str, str]:
    """What to do with one listed unit before a MIG change.

    Returns (action, reason): "stop-and-restart", "stop-only" (running, but it
    cannot or should not be started again), "restart-only" (not running now
    but would be), or "skip".
    """
    running = state.active_state in RUNNING_STATES
    if state.load_state == "not-found":
        if running:
            return "stop-only", "unit file removed while running; not restarted"
        return "skip", "not found"
    if state.load_state == "masked":
        if running:
            return "stop-only", "masked; not restarted"
        return "skip", "masked"
    if state.type == "oneshot":
        # A oneshot does its work and exits; rerunning it is not ours to decide.
        return "skip", f"oneshot unit ({state.active_state}); not stopped or restarted"
    if running:
        return "stop-and-restart", state.active_state
    if state.active_state == "deactivating":
        return "stop-only", "was already stopping; not restarted"
    if state.active_state == "failed":
        return "restart-only", "failed"
    if state.enabled:
        return "restart-only", f"inactive but {state.unit_file_state}"
    return "skip", f"inactive and {state.unit_file_state or 'not enabled'}"


class _AfterWalker:
    """Answers "is this unit ordered after one of the barriers (the target,
    our own service)?" by walking After= chains, with memory across units
    (their cones overlap), cycle detection and a bound on the number of units
    read."""

    def __init__(self, manager: SystemdManager, target: str, limit: int, also: tuple[str, ...] = ()) -> None:
        self._manager = manager
        self._barriers = (target, *also)
        self._target = target
        self._limit = limit
        self._after: dict[str, tuple[str, ...]] = {}
        self._answer: dict[str, str] = {}  # unit -> the barrier it is ordered after, "" for none

    def why_ordered_after(self, unit: str) -> str:
        try:
            barrier = self._reaches(unit)
        except _WalkTooLong:
            log.warning(
                "ordering of %s not fully read (more than %d units); treating it as ordered after %s",
                unit,
                self._limit,
                self._target,
            )
            return f"ordering graph larger than {self._limit} units"
        except SystemdError as exc:
            log.warning("cannot read ordering of %s (%s); queuing its start", unit, exc)
            return "ordering unknown"
        return f"ordered after {barrier}" if barrier else ""

    def _reaches(self, unit: str) -> str:
        """The barrier ``unit`` is ordered after, or ""."""
        # Plain reachability over After= edges, iterative. Ordering cycles
        # exist in real configurations (systemd breaks them per transaction),
        # so a visited set, not recursion, bounds it.
        if unit in self._barriers:
            return unit  # the target waits for the oneshot; the oneshot is itself
        if unit in self._answer:
            return self._answer[unit]
        visited = {unit}
        stack: list[tuple[str, list[str]]] = [(unit, list(self._read(unit)))]
        while stack:
            pending = stack[-1][1]
            if not pending:
                stack.pop()
                continue
            nxt = pending.pop()
            found = nxt if nxt in self._barriers else self._answer.get(nxt, "")
            if found:
                # The stack is a path of After= edges down to here.
                for node, _ in stack:
                    self._answer[node] = found
                return found
            if nxt in visited or nxt in self._answer:
                continue
            visited.add(nxt)
            stack.append((nxt, list(self._read(nxt))))
        # Everything reachable was seen without a barrier: none of it reaches one.
        for node in visited:
            self._answer[node] = ""
        return ""

    def _read(self, unit: str) -> tuple[str, ...]:
        if unit not in self._after:
            if len(self._after) >= self._limit:
                raise _WalkTooLong()
            self._after[unit] = self._manager.after(unit)
        return self._after[unit]


class _WalkTooLong(Exception):
    pass


def _unique(units: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for u in units:
        if u not in seen:
            seen.add(u)
            out.append(u)
    return out
