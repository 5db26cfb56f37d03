"""Serve a request on the node: the I/O around ``request.select``.

Under the service's run lock (``<state dir>/run.lock``, the one every apply
and boot run takes), so concurrent requests and applies are serialised and
no device is handed out twice:

1. repair what a killed request left (``pending`` in leases.json): GPU
   instances without a compute instance on that GPU are destroyed;
2. drop leases whose owner process is gone or whose device no longer exists;
3. observe the node and its processes, select (pure);
4. for a layout change: hooks ``apply-start`` and ``pre-apply-config``,
   record ``pending``, change one GPU at a time through one ``ApplyRun``
   (``apply_gpu_plan``: the engine's steps, checks and per-GPU undo
   journal); if a GPU fails, ``abort`` undoes every GPU this request changed;
   ``apply-exit`` runs whatever happened. GPU clients are never stopped;
5. write the leases and clear ``pending`` in one atomic write.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from migmanagerd.apply import report as R
from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.apply.nodeplan import GpuPlanEntry, NodePlan
from migmanagerd.apply.observe import GpuView, NodeState
from migmanagerd.apply.run import ApplyRun
from migmanagerd.catalog.model import Placement
from migmanagerd.errors import MigManagerError, SourceLocation
from migmanagerd.file_lock import LockTimeout, acquire
from migmanagerd.gpu.backend import Backend
from migmanagerd.hooks.runner import HookRunner
from migmanagerd.log import get_logger
from migmanagerd.ondemand.geometries import AllowedGeometries
from migmanagerd.ondemand.leases import (
    Lease,
    LeaseBook,
    Pending,
    drop_dead_owners,
    leases_path,
    load_book,
    save_book,
)
from migmanagerd.ondemand.request import DeviceState, GpuState, Refusal, Request, Selection, select
from migmanagerd.planner.types import MigDevice
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.run import RUN_LOCK_NAME, RUN_LOCK_WAIT_S
from migmanagerd.service.state import utc_now
from migmanagerd.spec.types import MigConfig

log = get_logger("ondemand")

ON_DEMAND = "on-demand"  # the name an on-demand change goes by in the engine's reports


class RequestRefused(MigManagerError):
    """The request cannot be met; nothing changed (exit 1)."""


class UndoFailed(MigManagerError):
    """A GPU change failed and could not be fully undone (exit 1)."""


@dataclass(frozen=True)
class ServedDevice:
    uuid: str
    gpu: int
    profile: str
    memory_mib: int
    placement: Placement


@dataclass(frozen=True)
class Served:
    owner: str
    devices: tuple[ServedDevice, ...]
    selection: Selection
    before: NodeState
    after: NodeState | None  # None for a dry run
    busy: frozenset[str]  # UUIDs with a process, before
    leased: frozenset[str] = frozenset()  # UUIDs leased before this request

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(d.uuid for d in self.devices)


@contextlib.contextmanager
def run_lock(state_dir: Path, wait_s: float = RUN_LOCK_WAIT_S) -> Iterator[None]:
    """The service's run lock (the same file, the same helper): a request waits
    for a boot run or an apply, and they for it; the kernel drops it when its
    holder dies."""
    path = state_dir / RUN_LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = acquire(path, wait_s)
    except LockTimeout:
        raise MigManagerError(
            f"another migmanagerd run (pid {_holder(path)}) still holds {path} after {wait_s:g}s; nothing was changed"
        ) from None
    except OSError as exc:
        raise MigManagerError(f"{state_dir}: cannot create the run lock: {exc.strerror}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip() or "?"
    except OSError:
        return "?"


def _gi_busy(view: GpuView, device: MigDevice, busy: frozenset[str]) -> bool:
    """A GPU instance is busy when a process runs on any of its compute
    instances (one shared by several has no single UUID of its own)."""
    if device.uuid in busy:
        return True
    gi = view.instance(device.gi_id) if device.gi_id is not None else None
    return gi is not None and any(ci.uuid in busy for ci in gi.compute_instances)


def busy_devices(backend: Backend, state: NodeState) -> frozenset[str]:
    """MIG devices with a process on them. A process holding the GPU but no
    MIG device (a monitoring agent) pins nothing: NVML lets free instances
    change beside it, and refuses to destroy one a process runs on."""
    busy: set[str] = set()
    for view in state.gpus:
        if not view.mode.current:
            continue
        for proc in backend.processes(view.index):
            if proc.gi_id is None:
                continue
            gi = view.instance(proc.gi_id)
            for ci in gi.compute_instances if gi is not None else ():
                if proc.ci_id is None or ci.id == proc.ci_id:
                    busy.add(ci.uuid)
    return frozenset(busy)


def live_leases(paths: NodePaths, state: NodeState) -> LeaseBook:
    """The leases that stand (owner alive, device present), without writing: for ``status``."""
    book, _ = drop_dead_owners(load_book(leases_path(paths.state_dir)))
    book, _ = book.keep_only({d.uuid for v in state.gpus for d in v.devices if d.uuid})
    return book


def release_owner(paths: NodePaths, owner: str) -> tuple[Lease, ...]:
    """Drop ``owner``'s leases (under the run lock); the devices stay, free."""
    with run_lock(paths.state_dir):
        path = leases_path(paths.state_dir)
        book, gone = load_book(path).release(owner)
        if gone:
            save_book(path, book)
        return gone


class OnDemand:
    def __init__(self, engine: ApplyEngine, paths: NodePaths, allowed: AllowedGeometries) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.paths = paths
        self.allowed = allowed
        self.book_path = leases_path(paths.state_dir)

    # --- reading -------------------------------------------------------------

    def busy_uuids(self, state: NodeState) -> frozenset[str]:
        return busy_devices(self.backend, state)

    def gpu_states(self, state: NodeState, book: LeaseBook, busy: frozenset[str]) -> list[GpuState]:
        leased = book.leased
        out = []
        for view in state.gpus:
            devices = tuple(
                DeviceState(d, busy=_gi_busy(view, d, busy), lease=leased[d.uuid].owner if d.uuid in leased else None)
                for d in view.devices
            )
            # a mode change pending a reset would clear the GPU: not a GPU to lay out now
            enabled = view.mode.current and view.mode.pending
            out.append(GpuState(view.index, view.info.name, view.model, enabled, devices))
        return out

    def tidy(self, book: LeaseBook, state: NodeState) -> LeaseBook:
        """Leases of gone owners and of devices that no longer exist are dropped."""
        book, dead = drop_dead_owners(book)
        uuids = {d.uuid for v in state.gpus for d in v.devices if d.uuid}
        book, missing = book.keep_only(uuids)
        for lease in dead:
            log.info("lease of %s on GPU %d released: owner %s is gone", lease.uuid, lease.gpu, lease.owner)
        for lease in missing:
            log.info("lease of %s (owner %s) dropped: the device no longer exists", lease.uuid, lease.owner)
        return book

    def current(self) -> tuple[LeaseBook, NodeState]:
        """Leases as they stand now (read-only: for ``status``)."""
        state = self.engine.observe()
        return self.tidy(load_book(self.book_path), state), state

    # --- writing -------------------------------------------------------------

    def _recover(self, book: LeaseBook) -> LeaseBook:
        """A request killed mid-change left ``pending``: finish no half-made instance."""
        if not book.pending:
            return book
        state = self.engine.observe()
        for p in book.pending:
            try:
                view = state.gpu(p.gpu)
            except KeyError:
                continue
            log.warning(
                "GPU %d: a request (pid %d, started %s) was interrupted while changing it; "
                "removing its half-made GPU instances", p.gpu, p.pid, p.started_at,
            )
            for gi in view.instances:
                if not gi.compute_instances:
                    self.backend.destroy_gpu_instance(p.gpu, gi.id)
        return replace(book, pending=())

    def request(self, req: Request, owner: str, pid_start: str | None, *, dry_run: bool = False,
                hooks: HookCalls | None = None, persist: Callable[[NodeState], None] | None = None) -> Served:
        """Serve ``req`` (see the module's order); ``persist`` gets the node as
        served, still under the run lock (``request --persist``)."""
        with run_lock(self.paths.state_dir):
            book = load_book(self.book_path)
            book = self._recover(book)
            state = self.engine.observe()
            book = self.tidy(book, state)
            busy = self.busy_uuids(state)
            choice = select(self.gpu_states(state, book, busy), self.allowed, req)
            if isinstance(choice, Refusal):
                if not dry_run:
                    save_book(self.book_path, book)
                raise RequestRefused(f"request refused: {choice.reason}; nothing changed")
            if dry_run:
                devices = tuple(
                    ServedDevice(h.uuid or "(new)", h.gpu, h.profile, h.memory_mib, h.placement) for h in choice.handouts
                )
                return Served(owner, devices, choice, state, None, busy, frozenset(book.leased))
            after = state
            if choice.changes:
                try:
                    after = self._change(book, state, choice, hooks)
                except UndoFailed:
                    raise  # ``pending`` stays: the next request repairs that GPU
                except MigManagerError:
                    # undone (or a hook failed): nothing is half-made, so no repair is owed
                    save_book(self.book_path, replace(book, pending=()))
                    raise
            devices = self._devices(choice, after)
            now = utc_now()
            before = book
            book = replace(book, pending=()).add(
                Lease(d.uuid, d.gpu, d.profile, owner, now, pid_start) for d in devices
            )
            save_book(self.book_path, book)
            if persist is not None:
                persist(after)
            return Served(owner, devices, choice, state, after, busy, frozenset(before.leased))

    def _change(self, book: LeaseBook, state: NodeState, choice: Selection, hooks: HookCalls | None) -> NodeState:
        gpus = [c.gpu for c in choice.changes]
        pending = tuple(
            Pending(os.getpid(), c.gpu, utc_now(), tuple(d.uuid for d in state.gpu(c.gpu).devices if d.uuid))
            for c in choice.changes
        )
        failure: BaseException | None = None
        try:
            if hooks is not None:
                hooks.before(gpus)
            save_book(self.book_path, replace(book, pending=pending))
            self._change_gpus(state, choice)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if hooks is not None:
                hooks.after(failure)
        return self.engine.observe()

    def _run_for(self, state: NodeState, choice: Selection) -> ApplyRun:
        """One ApplyRun (one undo journal per GPU) whose plan is the request's:
        the changed GPUs selected with their pinned plans, the others not."""
        changes = {c.gpu: c for c in choice.changes}
        entries = []
        for view in state.gpus:
            change = changes.get(view.index)
            entries.append(GpuPlanEntry(
                index=view.index, model=view.model_name, mode_current=view.mode.current,
                mode_pending=view.mode.pending, mode_target=True if change else None,
                result=change.plan if change else None, current_devices=view.devices,
            ))
        config = MigConfig(ON_DEMAND, (), SourceLocation(ON_DEMAND, 0, 0))
        return ApplyRun(self.engine, config, state, NodePlan(ON_DEMAND, tuple(entries)))

    def _change_gpus(self, state: NodeState, choice: Selection) -> None:
        run = self._run_for(state, choice)
        for change in choice.changes:  # one GPU at a time, in the order chosen
            result = run.apply_gpu_plan(change.gpu)
            if result.ok:
                continue
            undone = run.abort(f"GPU {change.gpu} of the same request failed")
            failed = [r for r in (result, *undone) if r.status == R.ROLLBACK_FAILED]
            message = f"request not served: {result.describe()}"
            if failed:
                message += "; " + "; ".join(r.describe() for r in failed if r is not result)
                raise UndoFailed(message.rstrip("; "))
            raise MigManagerError(message)

    def _devices(self, choice: Selection, after: NodeState) -> tuple[ServedDevice, ...]:
        out = []
        for h in choice.handouts:
            uuid = h.uuid
            if uuid is None:
                view = after.gpu(h.gpu)
                match = [d for d in view.devices if d.placement == h.placement and d.profile == h.profile and d.uuid]
                if not match:
                    raise MigManagerError(f"GPU {h.gpu}: {h.profile} at slot {h.placement.start} is missing after the change")
                uuid = match[0].uuid
            assert uuid is not None
            out.append(ServedDevice(uuid, h.gpu, h.profile, h.memory_mib, h.placement))
        return tuple(out)


class HookCalls:
    """apply-start and pre-apply-config before the first GPU write, apply-exit
    after it whatever happened: the hooks an apply runs around a geometry change."""

    def __init__(self, runner_for: Callable[[Sequence[int]], HookRunner]) -> None:
        self._runner_for = runner_for
        self._runner: HookRunner | None = None

    def before(self, gpus: Sequence[int]) -> None:
        self._runner = self._runner_for(gpus)
        self._runner.run("apply-start")
        self._runner.run("pre-apply-config")

    def after(self, failure: BaseException | None) -> None:
        if self._runner is None:
            return
        try:
            self._runner.run("apply-exit")
        except MigManagerError as exc:
            if failure is None:
                raise
            log.error("%s (after: %s)", exc, failure)
