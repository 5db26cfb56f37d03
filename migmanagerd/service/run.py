"""One boot-time run: converge the node to the selected MIG config.

The order of a run (issue: "the boot-time service"):

0. take the run lock (``<state dir>/run.lock``): one run at a time, so no
   run mistakes another live run's journal for a crashed one's;
1. read state.json; units a crashed earlier run left stopped are owed a restart;
2. resolve the selection (-c > MIG_PARTED_SELECTED_CONFIG > state.json), load
   and trust-check config, hooks and clients files;
3. plan against the real node; a config that does not fit stops here (exit 2)
   and nothing is touched but the restart of owed units; when every MIG mode
   is right, an armed reboot guard is cleared;
4. if the node already matches: done, no hook runs, no client is stopped
   (owed units are still started);
5. otherwise refuse (or stop) unlisted GPU holders and drain SLURM, then
   ``apply-start``; for a mode change ``pre-apply-mode``, stop the mode
   clients, set the mode, reset (or reboot once, guarded); ``pre-apply-config``,
   stop the geometry clients, apply the geometry; then — always, once
   ``apply-start`` has begun, failure or not — restart every stopped client
   and run ``apply-exit`` (a reboot in flight leaves the clients to the boot);
6. record the run in state.json (per-GPU results too when it failed), persist
   the selection if asked, run the integrations.

Every client stop is journaled before its stop job is queued, so a run killed
at any point leaves the next run a list of what to start again. Exit codes:
0 applied / nothing to do / reboot requested, 1 failed, 2 bad input or a
config that does not fit (nothing changed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from migmanagerd.errors import EXIT_FAILED, EXIT_OK, MigManagerError
from migmanagerd.log import get_logger
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.state import LastRun, StateStore, utc_now

log = get_logger("service")

RUN_LOCK_NAME = "run.lock"
# How long a run waits for another one to finish before it gives up (exit 1).
RUN_LOCK_WAIT_S = 300.0


@dataclass(frozen=True)
class ServiceOptions:
    config_file: str | None = None  # None: NodePaths.config_file
    hooks_file: str | None = None  # None: NodePaths.hooks_file when it exists
    selected_config: str | None = None  # -c
    mode_only: bool = False
    skip_reset: bool = False
    allow_reboot: bool = True
    persist_selection: bool = False  # `apply -c NAME`: make NAME the boot-time selection on success
    hook_timeout_s: float = 120.0
    backend: str | None = None


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    result: str  # ok | failed | reboot-required
    message: str


def _then(first: BaseException | None, later: list[MigManagerError]) -> MigManagerError:
    """One error for a failure and the cleanup failures after it, in the
    order they happened, with the exit code of the first."""
    causes: list[BaseException] = ([first] if first is not None else []) + list(later)
    error = MigManagerError("; then: ".join(str(c) for c in causes))
    error.exit_code = getattr(causes[0], "exit_code", EXIT_FAILED)
    return error


class LazySystemd:
    """Connects to systemd on first use: a run that changes nothing needs no D-Bus."""

    def __init__(self, connect: Callable[[], object]) -> None:
        self._connect = connect
        self._manager = None

    @property
    def connected(self) -> bool:
        return self._manager is not None

    def get(self):
        if self._manager is None:
            self._manager = self._connect()
        return self._manager

    def __getattr__(self, name: str):
        return getattr(self.get(), name)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _default_connect():
    from migmanagerd.clients.systemd import SystemdManager

    return SystemdManager.connect()


def _default_notifier():
    from migmanagerd.clients.notify import Notifier

    return Notifier.from_env()


def gpu_results(report: dict) -> list[dict]:
    """One result per GPU from a run's mode and geometry phases, by index.

    A GPU whose mode changed is "unchanged" in the geometry phase when it has
    no MIG devices to make (MIG turned off, or --mode-only): its mode result
    is the one that says what happened. Operation counts of both phases add up.
    """
    merged: dict[int, dict] = {}
    for phase in ("mode", "gpus"):
        for g in report.get(phase, []):
            old = merged.get(g["index"])
            if old is None:
                merged[g["index"]] = dict(g)
                continue
            ops = dict(old.get("operations", {}))
            for kind, n in g.get("operations", {}).items():
                ops[kind] = ops.get(kind, 0) + n
            new = dict(g) if g["status"] != "unchanged" else dict(old)
            new["operations"] = ops
            new["error"] = g.get("error") or old.get("error")
            merged[g["index"]] = new
    return [merged[i] for i in sorted(merged)]


class ServiceRun:
    def __init__(
        self,
        options: ServiceOptions,
        paths: NodePaths | None = None,
        *,
        connect_systemd: Callable[[], object] = _default_connect,
        notifier=None,
        backend=None,
    ) -> None:
        self.opts = options
        self.paths = paths or NodePaths.from_env()
        self.store = StateStore(self.paths)
        self.systemd = LazySystemd(connect_systemd)
        self.notify = notifier if notifier is not None else _default_notifier()
        self._backend = backend
        self.stopped: list[str] = []  # restart order, this run and carried over
        self.clients_stopped = 0
        self.rebooting = False  # a reboot was requested: leave the clients to the next boot
        self.report: dict = {}  # per-GPU results ("mode", "gpus"), kept when the run fails too
        self.config_name: str | None = None  # the selection this run resolved, once it has
        self.changed = False  # some GPU was written
        self._clients = None  # clients.yaml, once loaded (its stop/start timeouts)
        self._restart_tried = False

    # --- the run -------------------------------------------------------------

    def run(self) -> RunOutcome:
        """One run, under the run lock: a second run (a `migmanagerd service`
        by hand while the unit runs) would read this run's journal and start
        its clients again in the middle of its GPU change."""
        try:
            lock = self._run_lock()
        except MigManagerError as exc:
            self.notify.failed(str(exc))
            return RunOutcome(exc.exit_code, "failed", str(exc))
        try:
            return self._run()
        finally:
            os.close(lock)

    def _run_lock(self) -> int:
        """flock(2) on ``<state dir>/run.lock``, waited for at most
        RUN_LOCK_WAIT_S; the kernel drops it when its holder dies, so a
        killed run never blocks the next one."""
        import fcntl

        try:
            self.store.ensure_dir()
            path = self.paths.state_dir / RUN_LOCK_NAME
            # O_NOFOLLOW: a symlink planted here must not make root truncate its target
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise MigManagerError(f"{self.paths.state_dir}: cannot create the run lock: {exc.strerror}") from None
        deadline = time.monotonic() + RUN_LOCK_WAIT_S
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            if time.monotonic() >= deadline:
                os.close(fd)
                raise MigManagerError(
                    f"another migmanagerd run (pid {holder}) still holds {path} after {RUN_LOCK_WAIT_S:g}s; "
                    "nothing was changed"
                )
            if not told:
                told = True
                self.notify.status(f"waiting for another migmanagerd run (pid {holder}) to finish")
                self.notify.extend_timeout(RUN_LOCK_WAIT_S + 30)
            time.sleep(0.1)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            # the pid is only for a waiting run's message; the flock is the lock
            log.warning("%s: cannot write this run's pid (%s); going on", path, exc.strerror)
        return fd

    def _run(self) -> RunOutcome:
        started = utc_now()
        t0 = time.monotonic()
        loaded = self.store.load()
        if loaded.problem:
            log.warning("%s", loaded.problem)
        state = loaded.state
        if state.journal is not None and state.journal.stopped_units:
            log.warning(
                "an earlier run (pid %d, config '%s', phase %s) ended with %d GPU client(s) stopped: %s; "
                "they are restarted by this run",
                state.journal.pid, state.journal.config, state.journal.phase,
                len(state.journal.stopped_units), ", ".join(state.journal.stopped_units),
            )
            self.stopped.extend(state.journal.stopped_units)

        name = "?"
        engine = None
        integrations = None
        outcome: RunOutcome | None = None
        failure: Exception | None = None
        try:
            name, config, hooks, clients, integrations = self._load_inputs(state.selected_config)
            self.config_name = name
            self._clients = clients
            engine = self._engine()
            outcome = self._converge(engine, name, config, hooks, clients, integrations)
        except Exception as exc:
            failure = exc
        if not self._restart_tried:
            # units an earlier run left stopped are owed a start even when
            # this run stops early (bad input, nothing to change)
            try:
                self._restart_clients()
            except MigManagerError as exc:
                failure = _then(failure, [exc])
            except Exception as exc:
                failure = failure or exc
        if isinstance(failure, MigManagerError):
            outcome = RunOutcome(failure.exit_code, "failed", str(failure))
        elif failure is not None:  # a bug or an OS error: still record the run and say what happened
            log.debug("unexpected error", exc_info=failure)
            outcome = RunOutcome(EXIT_FAILED, "failed", f"unexpected error: {type(failure).__name__}: {failure}")
        assert outcome is not None
        self._record(name, started, outcome, self.report)
        if engine is not None:
            try:
                self._integrations(engine, integrations, name, outcome, time.monotonic() - t0)
            except Exception as exc:  # they report on the run; they must not change its result
                log.warning("integrations failed: %s", exc)
            finally:
                engine.backend.close()
        self.systemd.close()
        if outcome.exit_code != EXIT_OK:
            self.notify.failed(outcome.message)
        else:
            self.notify.status(outcome.message)  # also logs it
        return outcome

    def _load_inputs(self, state_selection: str | None):
        from migmanagerd.cli.selection import pick_config, selected_name
        from migmanagerd.service import trusted_files

        config_path = self.opts.config_file or str(self.paths.config_file)
        config_file = trusted_files.load_trusted_config(config_path)
        name = selected_name(self.opts.selected_config, config_file, fallback=lambda: state_selection)
        config = pick_config(config_file, name)
        hooks = trusted_files.load_trusted_hooks(self.opts.hooks_file, self.paths.hooks_file)
        clients = trusted_files.load_trusted_clients(self.paths.clients_file)
        integrations = trusted_files.load_trusted_integrations(self.paths.integrations_file)
        return name, config, hooks, clients, integrations

    def _engine(self):
        from migmanagerd.apply.engine import ApplyEngine
        from migmanagerd.gpu.factory import open_backend

        backend = self._backend if self._backend is not None else open_backend(self.opts.backend)
        return ApplyEngine(backend, notify=self.notify)

    def _converge(self, engine, name, config, hooks, clients, integrations) -> RunOutcome:
        from migmanagerd.apply.nodeplan import require_feasible
        from migmanagerd.hooks.runner import HookRunner
        from migmanagerd.service.reboot_guard import clear_marker

        self.notify.status(f"planning config '{name}'")
        plan = engine.plan(config, mode_only=self.opts.mode_only)
        require_feasible(plan)  # exit 2, nothing touched
        if not plan.mode_change_gpus and self.store.load().state.reboot_guard is not None:
            # every MIG mode is right now (the reboot helped, or the operator
            # fixed it): the guard has done its job, whatever else must change
            clear_marker(self.store)
        if not plan.needs_change:
            self._persist_selection(name)
            return RunOutcome(EXIT_OK, "ok", f"config '{name}' is already applied; nothing to do")

        waiting = self._reboot_pending(engine, name, plan)
        if waiting is not None:
            return waiting

        touched = sorted(set(plan.mode_change_gpus) | set(plan.geometry_change_gpus))
        runner = HookRunner(hooks, self._hook_env(name, touched), timeout_s=self.opts.hook_timeout_s)
        listed_mode = clients.units_for("mode") if clients else ()
        listed_config = clients.units_for("config") if clients else ()
        extra = self._unlisted_holders(engine, touched, tuple(listed_mode) + tuple(listed_config), clients)
        self._slurm_before_change(integrations, name)

        self.notify.status(f"applying config '{name}' to GPU(s) {', '.join(map(str, touched))}")
        failure: BaseException | None = None
        try:
            # apply-exit runs (below) once apply-start has begun, whatever happens
            self._hook(runner, "apply-start")
            return self._change(engine, name, config, plan, listed_mode, listed_config, extra, runner)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._after_change(runner, failure)

    def _reboot_pending(self, engine, name: str, plan) -> RunOutcome | None:
        """This boot already requested the reboot these mode changes need:
        say so and touch nothing (no hook, no client stop), or None."""
        from migmanagerd.service.reboot_guard import RebootAction, decide_reboot

        marker = self.store.load().state.reboot_guard
        gpus = plan.mode_change_gpus
        if marker is None or not gpus:
            return None
        # only when nothing is left to do before that reboot: every mode is
        # already pending as wanted and no GPU could be reset instead
        if any(plan.gpu(i).mode_pending != plan.gpu(i).mode_target for i in gpus):
            return None
        if any(engine.backend.reset_available(i) for i in gpus):
            return None
        decision = decide_reboot(marker, self.paths.read_boot_id(), name, gpus, self.opts.allow_reboot)
        if decision.action is not RebootAction.WAIT:
            return None
        return RunOutcome(EXIT_OK, "reboot-required", decision.message)

    def _change(self, engine, name, config, plan, listed_mode, listed_config, extra, runner) -> RunOutcome:
        from migmanagerd.service.reboot_guard import RebootAction, clear_marker, guard_reboot

        if plan.mode_change_gpus:
            self._hook(runner, "pre-apply-mode")
            self._stop_clients(name, "mode", tuple(listed_mode) + extra)
            mode_report = engine.apply_mode(plan, skip_reset=self.opts.skip_reset)
            self.changed = True
            self.report["mode"] = [r.to_json() for r in mode_report.gpus]
            # a GPU waiting for a reboot (or for the reset it was told to skip)
            # is not a failure: the guard below decides what happens to it
            waiting = set(mode_report.reboot_required) | set(mode_report.reset_skipped)
            failed = [r for r in mode_report.gpus if not r.ok and r.index not in waiting]
            if failed:
                raise MigManagerError("MIG mode change failed: " + "; ".join(r.describe() for r in failed))
            if mode_report.reboot_required:
                decision = guard_reboot(self.store, name, mode_report.reboot_required, self.opts.allow_reboot)
                if decision.action is RebootAction.REBOOT:
                    log.warning("%s", decision.message)
                    self.notify.status(decision.message)
                    try:
                        self.systemd.reboot()
                    except MigManagerError as exc:
                        # no reboot is coming: the marker must not make the
                        # next run wait for one (or refuse the one it needs)
                        clear_marker(self.store)
                        raise MigManagerError(f"{decision.message}, but the reboot request failed: {exc}") from None
                    # the units are enabled: the next boot starts them
                    self.rebooting = True
                    return RunOutcome(EXIT_OK, "reboot-required", decision.message)
                if decision.action is RebootAction.WAIT:
                    return RunOutcome(EXIT_OK, "reboot-required", decision.message)
                raise MigManagerError(decision.message)
            if mode_report.reset_skipped:
                return RunOutcome(
                    EXIT_OK, "ok",
                    f"config '{name}': MIG mode change is pending on GPU(s) "
                    f"{', '.join(map(str, mode_report.reset_skipped))} (--skip-reset): reset or reboot to finish",
                )
            if self.store.load().state.reboot_guard is not None:
                clear_marker(self.store)
        if not self.opts.mode_only:
            self._hook(runner, "pre-apply-config")
            self._stop_clients(name, "config", tuple(listed_config) + extra)
            geometry = engine.apply_geometry(config)
            self.report["gpus"] = [r.to_json() for r in geometry.gpus]
            self.changed = self.changed or any(r.op_count for r in geometry.gpus)
            if geometry.exit_code != EXIT_OK:
                raise MigManagerError(
                    f"config '{name}' not applied: "
                    + "; ".join(r.describe() for r in geometry.gpus if not r.ok)
                )
        self._persist_selection(name)
        return RunOutcome(EXIT_OK, "ok", f"config '{name}' applied")

    def _after_change(self, runner, failure: BaseException | None) -> None:
        """Restart the clients, then run apply-exit, both whatever happened
        before; their failures are raised after both were tried, after the
        change's own failure when there was one (``…; then: …``)."""
        errors: list[MigManagerError] = []
        try:
            self._restart_clients()
        except MigManagerError as exc:
            errors.append(exc)
        try:
            self._hook(runner, "apply-exit")
        except MigManagerError as exc:
            errors.append(exc)
        if not errors:
            return
        if failure is None and len(errors) == 1:
            raise errors[0]
        if failure is not None and not isinstance(failure, MigManagerError):
            for exc in errors:
                log.error("%s (after: %s)", exc, failure)
            return  # the unexpected error goes on up
        raise _then(failure, errors) from failure

    # --- clients -------------------------------------------------------------

    def _controller(self):
        from migmanagerd.clients.policy import ClientController

        timeouts = {}
        if self._clients is not None:  # clients.yaml's stop-timeout / start-timeout
            timeouts = {"stop_timeout_s": self._clients.stop_timeout_s, "start_timeout_s": self._clients.start_timeout_s}
        return ClientController(self.systemd.get(), notify=self.notify, **timeouts)

    def _stop_clients(self, name: str, change: str, units) -> None:
        """Stop ``units`` (listed in start order) in reverse order, one at a
        time. Each unit that will need a start afterwards is journaled BEFORE
        its stop job is queued: a run killed while a stop is in flight, or
        between a stop and the next state write, still leaves the unit in the
        journal for the next run to start again."""
        from migmanagerd.clients.policy import stop_decision

        units = [u for u in dict.fromkeys(units) if u not in self.stopped]
        if not units:
            return
        self.store.begin_journal(name, f"stopping clients before {change} change")
        self.notify.status(f"stopping {len(units)} GPU client(s) before the {change} change")
        controller = self._controller()
        for unit in reversed(units):
            try:
                action, _ = stop_decision(self.systemd.unit(unit))
            except MigManagerError:
                action = "stop-and-restart"  # unknown: journaling it is the safe side
            if action in ("stop-and-restart", "restart-only"):
                self._note_stopped([unit])
            try:
                report = controller.stop([unit])
            except MigManagerError as exc:
                partial = getattr(exc, "report", None)
                if partial is not None:
                    self._settle(unit, partial.restart)
                raise
            self._settle(unit, report.restart)
        self.store.set_phase(f"applying {change}")

    def _settle(self, unit: str, restart_order) -> None:
        """After ``unit``'s stop: journal it if it needs a start afterwards,
        and forget it if it does not (it was journaled ahead, in case)."""
        if unit in restart_order:
            self._note_stopped([unit])
        elif unit in self.stopped:
            self.store.record_started([unit])
            self.stopped.remove(unit)
            self.clients_stopped -= 1

    def _note_stopped(self, restart_order) -> None:
        new = [u for u in restart_order if u not in self.stopped]
        if new:
            # the store wants stop order; restart order is its reverse
            self.store.record_stopped(list(reversed(new)))
            self.stopped = new + self.stopped
            self.clients_stopped += len(new)

    def _restart_clients(self) -> None:
        self._restart_tried = True
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
                "GPU client(s) failed to start again: "
                + ", ".join(f"{u} ({r})" for u, r in report.failed)
            )

    def _unlisted_holders(self, engine, gpus, listed, clients) -> tuple[str, ...]:
        from migmanagerd.clients.discovery import check_holders, find_gpu_holders

        if not gpus:
            return ()
        holders = find_gpu_holders(engine.backend, self.systemd, gpus)
        if not holders:
            return ()
        discover = clients.discover if clients else "refuse"
        return tuple(check_holders(holders, listed, discover))

    # --- hooks, state, selection, integrations --------------------------------

    def _hook_env(self, name: str, gpus) -> dict[str, str]:
        from migmanagerd.hooks.runner import hook_env

        return hook_env(
            selected_config=name,
            config_file=self.opts.config_file or str(self.paths.config_file),
            hooks_file=self.opts.hooks_file or str(self.paths.hooks_file),
            gpus=gpus,
            skip_reset=self.opts.skip_reset,
            mode_only=self.opts.mode_only,
        )

    def _hook(self, runner, name: str) -> None:
        # a hook may take its whole timeout; never let the unit's start timeout kill us first
        self.notify.extend_timeout(self.opts.hook_timeout_s + 30)
        runner.run(name)

    def _persist_selection(self, name: str) -> None:
        if not self.opts.persist_selection:
            return
        from migmanagerd.service.selector import write_selector

        config_file = self.opts.config_file
        if config_file and Path(config_file) == self.paths.config_file:
            config_file = None
        if write_selector(self.paths.dropin, name, config_file, self.opts.hooks_file):
            log.info("%s: selected config is now '%s'", self.paths.dropin, name)
            try:
                self.systemd.reload()
            except MigManagerError as exc:
                log.warning("selection written, but systemd was not reloaded: %s", exc)

    def _record(self, name: str, started: str, outcome: RunOutcome, report_json: dict) -> None:
        gpus = {str(g["index"]): g for g in gpu_results(report_json)}
        last = LastRun(
            config=name, started_at=started, finished_at=utc_now(), result=outcome.result,
            exit_code=outcome.exit_code, gpus=gpus, message=outcome.message,
        )
        try:
            self.store.record_run(last)
        except OSError as exc:
            log.error("%s: cannot record the run: %s", self.store.path, exc.strerror)

    def _slurm_before_change(self, integrations, name: str) -> None:
        if not integrations.slurm.enabled:
            return
        from migmanagerd.integrations.run import make_slurm_drain

        drain = make_slurm_drain(integrations, unit_active=self._unit_active, progress=self.notify.status)
        if not drain.before_change(name):
            raise MigManagerError(f"config '{name}': the SLURM node did not drain in time; nothing changed")

    def _unit_active(self, unit: str) -> bool:
        try:
            return self.systemd.unit(unit).active_state == "active"
        except MigManagerError:
            return False

    def _integrations(self, engine, settings, name, outcome: RunOutcome, duration_s: float) -> None:
        """``settings`` were loaded with the run's other inputs (an engine
        exists only after they loaded), so the file is read once per run."""
        from migmanagerd.integrations.run import run_integrations
        from migmanagerd.service.layout import node_layout

        if settings is None or not settings.any_enabled:
            return
        from migmanagerd.integrations.layout import RunSummary

        ops: dict[str, int] = {}
        for g in gpu_results(self.report):
            for k, v in g.get("operations", {}).items():
                ops[k] = ops.get(k, 0) + v
        summary = RunSummary(
            config=name, matched=outcome.exit_code == EXIT_OK and outcome.result == "ok",
            result=outcome.result, duration_s=duration_s, clients_stopped=self.clients_stopped,
            operations=ops, changed=self.changed,
        )

        def restart_unit(unit: str) -> None:
            self.systemd.restart(unit, 90.0)

        def enqueue_restart(unit: str) -> None:
            # ordered after nvidia-gpu-reset.target on a real node: waiting
            # for it from inside this unit's start would deadlock the boot
            self.systemd.enqueue_restart(unit)

        def unit_exists(unit: str) -> bool:
            try:
                return self.systemd.unit(unit).load_state == "loaded"
            except MigManagerError:
                return False

        result = run_integrations(
            settings, node_layout(engine.observe()), summary,
            restart_unit=restart_unit, enqueue_restart=enqueue_restart, unit_exists=unit_exists,
            unit_active=self._unit_active,
        )
        self.store.update(lambda s: replace(s, integrations=result))
