"""One boot-time run: converge the node to the selected MIG config.

The order of a run:

0. take the run lock (``<state dir>/run.lock``): one run at a time, so no
   run mistakes another live run's journal for a crashed one's;
1. read state.json; units a crashed earlier run left stopped are owed a restart;
2. load the inputs (``service/inputs.py``): the selection (-c >
   MIG_PARTED_SELECTED_CONFIG > state.json), config, hooks, clients and
   integrations files, each trust-checked;
3. plan against the real node; a config that does not fit stops here (exit 2)
   and nothing is touched but the restart of owed units; when every MIG mode
   is right, an armed reboot guard is cleared;
4. if the node already matches: done, no hook runs, no client is stopped
   (owed units are still started);
5. otherwise refuse (or stop) unlisted GPU holders and drain SLURM, then
   ``apply-start``; for a mode change ``pre-apply-mode``, stop the mode
   clients, run the apply's mode phase (reset, or reboot once, guarded);
   ``pre-apply-config``, stop the geometry clients, run its geometry phase;
   then — always, once ``apply-start`` has begun, failure or not — restart
   every stopped client and run ``apply-exit`` (a reboot in flight leaves the
   clients to the boot). Both phases belong to one ``ApplyRun``
   (``apply/run.py``) with one undo journal per GPU, so a GPU whose devices
   cannot be made is returned to the mode it had too;
6. record the run in state.json (one result per GPU), persist the selection
   if asked, run the integrations;
7. only then, when the mode change needs one, request the reboot: the
   shutdown it starts stops this unit at once, so nothing may come after it
   (and SIGTERM is ignored from then on, so the run still ends with exit 0).

Client stops are journaled before they are queued (``service/client_journal.py``).
Exit codes: 0 applied / nothing to do / reboot requested, 1 failed, 2 bad
input or a config that does not fit (nothing changed).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from migmanagerd.apply.coverage import require_selects_gpu
from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.apply.nodeplan import NodePlan, require_feasible
from migmanagerd.apply.report import GpuResult
from migmanagerd.apply.run import ApplyRun
from migmanagerd.catalog.load import load_catalog
from migmanagerd.clients.discovery import check_holders, find_gpu_holders
from migmanagerd.clients.notify import Notifier
from migmanagerd.errors import EXIT_FAILED, EXIT_OK, MigManagerError
from migmanagerd.file_lock import LockTimeout, acquire
from migmanagerd.gpu.backend import Backend
from migmanagerd.gpu.factory import open_backend
from migmanagerd.hooks.runner import HookRunner, hook_env
from migmanagerd.log import get_logger
from migmanagerd.service.client_journal import ClientJournal
from migmanagerd.service.inputs import RunInputs, load_inputs
from migmanagerd.service.integration_steps import drain_before_change, report_run, run_summary
from migmanagerd.service.lazy_systemd import Connect, LazySystemd, connect_systemd
from migmanagerd.service.options import RunOutcome, ServiceOptions
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.reboot_guard import (
    RebootAction,
    RebootDecision,
    clear_marker,
    decide_reboot,
    guard_reboot,
)
from migmanagerd.service.selector import write_selector
from migmanagerd.service.state import LastRun, StateStore, utc_now

__all__ = ["RUN_LOCK_WAIT_S", "RunOutcome", "ServiceOptions", "ServiceRun"]

log = get_logger("service")

RUN_LOCK_NAME = "run.lock"
# How long a run waits for another one to finish before it gives up (exit 1).
RUN_LOCK_WAIT_S = 300.0


def _then(first: BaseException | None, later: list[MigManagerError]) -> MigManagerError:
    """One error for a failure and the cleanup failures after it, in the
    order they happened, with the exit code of the first."""
    causes: list[BaseException] = ([first] if first is not None else []) + list(later)
    error = MigManagerError("; then: ".join(str(c) for c in causes))
    error.exit_code = getattr(causes[0], "exit_code", EXIT_FAILED)
    return error


def _attempt(what: str, step: Callable[[], None], errors: list[MigManagerError]) -> Exception | None:
    """Run a cleanup step that must not keep the next one from running: our
    errors are collected, any other exception (a full disk under the journal,
    a bug) is logged with its traceback and returned for the caller to raise."""
    try:
        step()
    except MigManagerError as exc:
        errors.append(exc)
    except Exception as exc:  # noqa: BLE001 - logged with traceback and re-raised by the caller
        log.error("%s: unexpected error: %s", what, exc, exc_info=exc)
        return exc
    return None


class ServiceRun:
    def __init__(
        self,
        options: ServiceOptions,
        paths: NodePaths | None = None,
        *,
        connect_systemd: Connect = connect_systemd,
        notifier: Notifier | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.opts = options
        self.paths = paths or NodePaths.from_env()
        self.store = StateStore(self.paths)
        self.systemd = LazySystemd(connect_systemd)
        self.notify = notifier if notifier is not None else Notifier.from_env()
        self.clients = ClientJournal(self.store, self.systemd, self.notify)
        self._backend = backend
        self.inputs: RunInputs | None = None  # once loaded
        self.apply_run: ApplyRun | None = None  # once the first GPU write is near
        self.changed = False  # some GPU was written
        self.reboot: RebootDecision | None = None  # a reboot to request as the run's last action
        self._announced: str | None = None  # a message already logged (each decision once)

    @property
    def config_name(self) -> str | None:
        """The selection this run resolved, once it has."""
        return self.inputs.name if self.inputs is not None else None

    def gpu_results(self) -> tuple[GpuResult, ...]:
        """One result per GPU the apply decided on (empty when it wrote nothing)."""
        return self.apply_run.results() if self.apply_run is not None else ()

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
        RUN_LOCK_WAIT_S; the holder's pid is written into it for the message."""
        path = self.paths.state_dir / RUN_LOCK_NAME

        def holder(fd: int) -> str:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"

        def waiting(fd: int) -> None:
            self.notify.status(f"waiting for another migmanagerd run (pid {holder(fd)}) to finish")
            self.notify.extend_timeout(RUN_LOCK_WAIT_S + 30)

        try:
            self.store.ensure_dir()
            fd = acquire(path, RUN_LOCK_WAIT_S, on_wait=waiting)
        except LockTimeout:
            raise MigManagerError(
                f"another migmanagerd run (pid {self._lock_holder(path)}) still holds {path} after "
                f"{RUN_LOCK_WAIT_S:g}s; nothing was changed"
            ) from None
        except OSError as exc:
            raise MigManagerError(f"{self.paths.state_dir}: cannot create the run lock: {exc.strerror}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            # the pid is only for a waiting run's message; the flock is the lock
            log.warning("%s: cannot write this run's pid (%s); going on", path, exc.strerror)
        return fd

    @staticmethod
    def _lock_holder(path: Path) -> str:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # never read through a planted link
        except OSError:
            return "?"
        try:
            return os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        except OSError:
            return "?"
        finally:
            os.close(fd)

    def _run(self) -> RunOutcome:
        started = utc_now()
        t0 = time.monotonic()
        loaded = self.store.load()
        if loaded.problem:
            log.warning("%s", loaded.problem)
        journal = loaded.state.journal
        if journal is not None and journal.stopped_units:
            log.warning(
                "an earlier run (pid %d, config '%s', phase %s) ended with %d GPU client(s) stopped: %s; "
                "they are restarted by this run",
                journal.pid, journal.config, journal.phase, len(journal.stopped_units),
                ", ".join(journal.stopped_units),
            )
            self.clients.carry_over(journal.stopped_units)

        engine: ApplyEngine | None = None
        outcome: RunOutcome | None = None
        failure: Exception | None = None
        try:
            fallback = loaded.state.selected_config if self.opts.name_fallback else None
            self.inputs = self._load_inputs(fallback)
            self.clients.clients = self.inputs.clients
            engine = self._engine()
            outcome = self._converge(engine, self.inputs)
        except MigManagerError as exc:
            failure = exc
        except Exception as exc:  # a bug or an OS error: the run is still recorded and its clients started
            log.error("unexpected error: %s: %s", type(exc).__name__, exc, exc_info=exc)
            failure = exc
        failure = self._restart_owed(failure)
        if isinstance(failure, MigManagerError):
            outcome = RunOutcome(failure.exit_code, "failed", str(failure))
        elif failure is not None:
            outcome = RunOutcome(EXIT_FAILED, "failed", f"unexpected error: {type(failure).__name__}: {failure}")
        assert outcome is not None
        name = self.config_name or "?"
        self._record(name, started, outcome)
        if engine is not None:
            self._report(engine, name, outcome, time.monotonic() - t0)
        outcome = self._request_reboot(name, started, outcome)
        self.systemd.close()
        if outcome.exit_code != EXIT_OK:
            self.notify.failed(outcome.message)
        elif outcome.message != self._announced:
            self.notify.status(outcome.message)  # also logs it
        return outcome

    def _request_reboot(self, name: str, started: str, outcome: RunOutcome) -> RunOutcome:
        """The run's last action: apply-exit has run, the run and the
        integrations are recorded. The shutdown this starts stops the unit
        within milliseconds; its SIGTERM must not turn a finished run into a
        killed one, so it is ignored from here on."""
        if self.reboot is None:
            return outcome
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self.systemd.get().reboot()
            return outcome
        except MigManagerError as exc:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            # no reboot is coming: the marker must not make the next run wait
            # for one (or refuse the one it needs), and the clients left to
            # that boot are started now
            clear_marker(self.store)
            failure = MigManagerError(f"{self.reboot.message}, but the reboot request failed: {exc}")
            self.clients.rebooting = False
            try:
                self.clients.restart()
            except MigManagerError as later:
                failure = _then(failure, [later])
            failed = RunOutcome(failure.exit_code, "failed", str(failure))
            self._record(name, started, failed)
            return failed

    def _load_inputs(self, state_selection: str | None) -> RunInputs:
        """What this run converges to (``restore`` brings its own: service/restore.py)."""
        return load_inputs(self.opts, self.paths, state_selection)

    def _restart_owed(self, failure: Exception | None) -> Exception | None:
        """Units an earlier run left stopped are owed a start even when this
        run stops early (bad input, nothing to change)."""
        if self.clients.restart_tried:
            return failure
        try:
            self.clients.restart()
        except MigManagerError as exc:
            return _then(failure, [exc])
        except Exception as exc:  # an unexpected error is logged with its traceback and reported
            log.error("restarting GPU clients: unexpected error: %s", exc, exc_info=exc)
            return failure or exc
        return failure

    def _engine(self) -> ApplyEngine:
        backend = self._backend if self._backend is not None else open_backend(self.opts.backend)
        return ApplyEngine(backend, notify=self.notify)

    def _converge(self, engine: ApplyEngine, inputs: RunInputs) -> RunOutcome:
        name = inputs.name
        self.notify.status(f"planning config '{name}'")
        state = engine.observe()
        plan = engine.plan(inputs.config, mode_only=self.opts.mode_only, state=state)
        require_selects_gpu(inputs.config, state, load_catalog())  # exit 2, nothing touched
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
        runner = HookRunner(inputs.hooks, self._hook_env(inputs, touched), timeout_s=self.opts.hook_timeout_s)
        extra = self._unlisted_holders(engine, touched, inputs)
        drain_before_change(inputs.integrations, name, self.systemd, self.notify)

        self.notify.status(f"applying config '{name}' to GPU(s) {', '.join(map(str, touched))}")
        failure: BaseException | None = None
        try:
            # apply-exit runs (below) once apply-start has begun, whatever happens
            self._hook(runner, "apply-start")
            return self._change(engine, inputs, plan, extra, runner)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._after_change(runner, failure)

    def _reboot_pending(self, engine: ApplyEngine, name: str, plan: NodePlan) -> RunOutcome | None:
        """This boot already requested the reboot these mode changes need:
        say so and touch nothing (no hook, no client stop), or None."""
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

    def _change(
        self, engine: ApplyEngine, inputs: RunInputs, plan: NodePlan, extra: tuple[str, ...], runner: HookRunner
    ) -> RunOutcome:
        name = inputs.name
        if plan.mode_change_gpus:
            self._hook(runner, "pre-apply-mode")
            self.clients.stop(name, "mode", inputs.listed_units("mode") + extra)
            run = self._start(engine, inputs)
            self.changed = True
            stop = self._mode_phase(run, name)
            if stop is not None:
                return stop
        if not self.opts.mode_only:
            run = self.apply_run or self._start(engine, inputs)
            try:
                self._hook(runner, "pre-apply-config")
                self.clients.stop(name, "config", inputs.listed_units("config") + extra)
            except BaseException:
                # the run stops between its phases: a mode it changed goes back too
                run.abort("stopped before creating MIG devices")
                raise
            run.geometry_phase()
            self.changed = self.changed or run.changed
        bad = [r for r in self.gpu_results() if not r.ok]
        if bad:
            raise MigManagerError(f"config '{name}' not applied: " + "; ".join(r.describe() for r in bad))
        self._persist_selection(name)
        return RunOutcome(EXIT_OK, "ok", f"config '{name}' applied")

    def _start(self, engine: ApplyEngine, inputs: RunInputs) -> ApplyRun:
        """The apply, planned on the node as it is just before its first write
        (after the hooks and client stops before it)."""
        self.apply_run = engine.start(inputs.config, mode_only=self.opts.mode_only, skip_reset=self.opts.skip_reset)
        return self.apply_run

    def _mode_phase(self, run: ApplyRun, name: str) -> RunOutcome | None:
        """Run the mode phase; an outcome when the run ends with it (a reboot
        is needed, or the reset was skipped), None to go on with the geometry."""
        mode = run.mode_phase()
        # a GPU waiting for a reboot (or for the reset it was told to skip)
        # is not a failure: the guard below decides what happens to it
        waiting = set(mode.reboot_required) | set(mode.reset_skipped)
        failed = [r for r in mode.gpus if not r.ok and r.index not in waiting]
        if failed and waiting:
            raise MigManagerError("MIG mode change failed: " + "; ".join(r.describe() for r in failed))
        if mode.reboot_required:
            return self._reboot(name, mode.reboot_required)
        if mode.reset_skipped:
            return RunOutcome(
                EXIT_OK, "ok",
                f"config '{name}': MIG mode change is pending on GPU(s) "
                f"{', '.join(map(str, mode.reset_skipped))} (--skip-reset): reset or reboot to finish",
            )
        if not failed and self.store.load().state.reboot_guard is not None:
            clear_marker(self.store)
        return None  # GPUs whose mode failed were undone; the others go on

    def _reboot(self, name: str, gpus: tuple[int, ...]) -> RunOutcome:
        decision = guard_reboot(self.store, name, gpus, self.opts.allow_reboot)
        if decision.action is RebootAction.REBOOT:
            self.notify.warn(decision.message)
            self._announced = decision.message
            # requested at the very end of the run (_request_reboot), after
            # apply-exit, the record and the integrations; the enabled
            # clients are left to the boot
            self.reboot = decision
            self.clients.rebooting = True
            return RunOutcome(EXIT_OK, "reboot-required", decision.message)
        if decision.action is RebootAction.WAIT:
            return RunOutcome(EXIT_OK, "reboot-required", decision.message)
        raise MigManagerError(decision.message)

    def _after_change(self, runner: HookRunner, failure: BaseException | None) -> None:
        """Restart the clients, then run apply-exit, both whatever happened
        before; their failures are raised after both were tried, after the
        change's own failure when there was one (``…; then: …``)."""
        errors: list[MigManagerError] = []
        unexpected = _attempt("restarting GPU clients", self.clients.restart, errors)
        later = _attempt("apply-exit", lambda: self._hook(runner, "apply-exit"), errors)
        unexpected = unexpected or later
        if unexpected is not None and failure is None:
            for error in errors:
                log.error("%s (with: %s)", error, unexpected)
            raise unexpected
        if not errors:
            return
        if failure is None and len(errors) == 1:
            raise errors[0]
        if failure is not None and not isinstance(failure, MigManagerError):
            for error in errors:
                log.error("%s (after: %s)", error, failure)
            return  # the unexpected error goes on up
        raise _then(failure, errors) from failure

    def _unlisted_holders(self, engine: ApplyEngine, gpus: list[int], inputs: RunInputs) -> tuple[str, ...]:
        if not gpus:
            return ()
        holders = find_gpu_holders(engine.backend, self.systemd, gpus)
        if not holders:
            return ()
        listed = inputs.listed_units("mode") + inputs.listed_units("config")
        return tuple(check_holders(holders, listed, inputs.discover))

    # --- hooks, state, selection, integrations --------------------------------

    def _hook_env(self, inputs: RunInputs, gpus: list[int]) -> dict[str, str]:
        return hook_env(
            selected_config=inputs.name,
            config_file=inputs.config_file,
            hooks_file=self.opts.hooks_file or str(self.paths.hooks_file),
            gpus=gpus,
            skip_reset=self.opts.skip_reset,
            mode_only=self.opts.mode_only,
        )

    def _hook(self, runner: HookRunner, name: str) -> None:
        # a hook may take its whole timeout; never let the unit's start timeout kill us first
        self.notify.extend_timeout(self.opts.hook_timeout_s + 30)
        runner.run(name)

    def _persist_selection(self, name: str) -> None:
        if not self.opts.persist_selection:
            return
        config_file = self.opts.config_file
        if config_file and Path(config_file) == self.paths.config_file:
            config_file = None
        if write_selector(self.paths.dropin, name, config_file, self.opts.hooks_file):
            log.info("%s: selected config is now '%s'", self.paths.dropin, name)
            try:
                self.systemd.get().reload()
            except MigManagerError as exc:
                log.warning("selection written, but systemd was not reloaded: %s", exc)

    def _record(self, name: str, started: str, outcome: RunOutcome) -> None:
        last = LastRun(
            config=name, started_at=started, finished_at=utc_now(), result=outcome.result,
            exit_code=outcome.exit_code, gpus={str(r.index): r.to_json() for r in self.gpu_results()},
            message=outcome.message,
        )
        try:
            self.store.record_run(last)
        except OSError as exc:
            log.error("%s: cannot record the run: %s", self.store.path, exc.strerror)

    def _report(self, engine: ApplyEngine, name: str, outcome: RunOutcome, duration_s: float) -> None:
        """The integrations report on the run; they must not change its result."""
        summary = run_summary(
            name, outcome, self.gpu_results(), duration_s=duration_s,
            clients_stopped=self.clients.stopped_count, changed=self.changed,
        )
        try:
            report_run(self.inputs.integrations if self.inputs else None, engine, self.store, self.systemd, summary)
        except Exception as exc:  # they report on the run; logged with its traceback, the run's result stands
            log.warning("integrations failed: %s", exc, exc_info=exc)
        finally:
            engine.backend.close()
