"""The apply engine: MIG mode, then geometry, GPU by GPU in parallel, with
per-GPU rollback.

The boot-time service and the ``apply``/``assert``/``plan`` commands call this.
Every decision is made on an observation and a plan first (``observe``,
``plan``); only ``apply*`` write, and only what the plan says. A config that
does not fit raises ``UsageError`` before the first write.

One apply is one ``ApplyRun`` (``start``; ``apply`` drives one through both
phases): writes per GPU go through one ``GpuWriter`` journal for the whole
apply; when a step fails, that GPU alone is undone to the layout it had when
the apply started (including its MIG mode, with a reset where the mode change
needed one), and the other GPUs' results stand. The phase steps below are
the run's; nothing else calls them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from migmanagerd.apply import report as R
from migmanagerd.apply.compare import differences, format_devices
from migmanagerd.apply.nodeplan import GpuPlanEntry, NodePlan, plan_node, require_feasible
from migmanagerd.apply.observe import GpuView, NodeState, observe_gpu, observe_node
from migmanagerd.apply.progress import Notifier, Progress
from migmanagerd.apply.report import ApplyReport, GeometryReport, GpuResult, ModeReport
from migmanagerd.apply.rollback import GpuWriter
from migmanagerd.apply.run import ApplyRun
from migmanagerd.catalog.load import Catalog, load_catalog
from migmanagerd.catalog.model import CiProfile, GiProfile, GpuModel
from migmanagerd.errors import MigManagerError
from migmanagerd.gpu.backend import Backend, GpuInfo
from migmanagerd.log import get_logger
from migmanagerd.planner.packing import shape_ci_names
from migmanagerd.planner.types import GiAdjust, GpuPlan, Infeasible, MigDevice
from migmanagerd.spec.profile import MigProfile, ProfileNameError
from migmanagerd.spec.types import MigConfig

log = get_logger("apply")

MAX_WORKERS = 16

PhaseHook = Callable[[NodePlan], None]

T = TypeVar("T")
U = TypeVar("U")


def _onoff(flag: bool) -> str:
    return "enabled" if flag else "disabled"


def _mode_text(view: GpuView) -> str:
    mode = f"MIG mode {_onoff(view.mode.current)}"
    if view.mode.pending != view.mode.current:
        mode += f" ({_onoff(view.mode.pending)} pending)"
    return mode


LayoutKey = tuple[bool, bool, tuple[tuple[int, int, str], ...]]


def _is_bug(exc: Exception) -> bool:
    """Whether a failure is not one of ours: its traceback is worth logging.

    GPU steps catch every exception, bugs included, so that the GPU is rolled
    back instead of left half-built; only the unexpected ones need a traceback.
    """
    return not isinstance(exc, MigManagerError)


def layout_key(view: GpuView) -> LayoutKey:
    """What "the same layout" means for rollback checks: mode and devices at placements."""
    devices = sorted((d.placement.start, d.placement.size, d.profile) for d in view.devices)
    return (view.mode.current, view.mode.pending, tuple(devices))


def _ops_since(writer: GpuWriter, before: Counter[str]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in writer.ops.items() if v - before.get(k, 0)}


@dataclass
class _ModeWork:
    """One mode phase's inputs and its results so far, by GPU index."""

    plan: NodePlan
    state: NodeState
    writers: dict[int, GpuWriter]
    progress: Progress
    start_ops: dict[int, Counter[str]]
    results: dict[int, GpuResult] = field(default_factory=dict)

    def ops(self, index: int) -> dict[str, int]:
        return _ops_since(self.writers[index], self.start_ops[index])


class ApplyEngine:
    def __init__(
        self,
        backend: Backend,
        catalog: Catalog | None = None,
        notify: Notifier | None = None,
        *,
        max_workers: int = MAX_WORKERS,
    ) -> None:
        if catalog is None:
            catalog = load_catalog()
        self.backend = backend
        self.catalog = catalog
        self.notify = notify
        self.max_workers = max(1, min(MAX_WORKERS, max_workers))

    # --- reading -------------------------------------------------------------

    def model_for(self, info: GpuInfo) -> GpuModel | None:
        if not info.mig_capable:
            return None
        return self.catalog.for_device(info.pci_device_id, info.name, info.memory_mib)

    def observe(self) -> NodeState:
        return observe_node(self.backend, self.model_for)

    def observe_gpu(self, view: GpuView) -> GpuView:
        return observe_gpu(self.backend, view.info, view.model)

    def plan(self, config: MigConfig, *, mode_only: bool = False, state: NodeState | None = None) -> NodePlan:
        return plan_node(config, state if state is not None else self.observe(), mode_only=mode_only)

    def assert_config(self, config: MigConfig, *, mode_only: bool = False) -> list[str]:
        """What differs from ``config``, one line per GPU; empty when applied."""
        return differences(self.plan(config, mode_only=mode_only))

    # --- writing -------------------------------------------------------------

    def start(
        self,
        config: MigConfig,
        *,
        mode_only: bool = False,
        skip_reset: bool = False,
        plan: NodePlan | None = None,
        state: NodeState | None = None,
    ) -> ApplyRun:
        """A run of ``config`` on this node (nothing written yet): the service
        and ``apply()`` drive its phases. ``plan`` must have been made from
        ``state`` (both are taken afresh when not given)."""
        if state is None:
            state = self.observe()
            plan = None
        if plan is None:
            plan = self.plan(config, mode_only=mode_only, state=state)
        require_feasible(plan)
        return ApplyRun(self, config, state, plan, mode_only=mode_only, skip_reset=skip_reset)

    def apply(
        self,
        config: MigConfig,
        *,
        mode_only: bool = False,
        skip_reset: bool = False,
        before_mode: PhaseHook | None = None,
        before_geometry: PhaseHook | None = None,
    ) -> ApplyReport:
        """Mode, then geometry; GPUs already as wanted get no write.

        ``before_mode(plan)`` runs just before the first mode write (only when a
        mode changes) and ``before_geometry(plan)`` just before the first MIG
        device write (only when devices change; ``plan`` is the re-plan after
        the mode phase): the places nvidia-mig-parted runs its
        ``pre-apply-mode`` and ``pre-apply-config`` hooks. If
        ``before_geometry`` raises, the mode changes already made are rolled
        back and the exception propagates; ``before_mode`` raising leaves the
        node untouched.
        """
        run = self.start(config, mode_only=mode_only, skip_reset=skip_reset)
        if not run.plan.needs_change:
            run.progress.node(f"config '{config.name}' already applied")
            return ApplyReport(config.name, run.results())
        if run.plan.mode_change_gpus:
            if before_mode is not None:
                before_mode(run.plan)
            run.mode_phase()
        if not mode_only:
            run.geometry_phase(before=before_geometry)
        return run.report()

    # --- phases --------------------------------------------------------------

    def _parallel(self, fn: Callable[[T], U], items: Sequence[T]) -> list[U]:
        """Run ``fn`` once per GPU, all GPUs at once (bounded), results in input order."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(items)), thread_name_prefix="gpu") as pool:
            return list(pool.map(fn, items))

    def _mode_phase(
        self,
        plan: NodePlan,
        state: NodeState,
        writers: dict[int, GpuWriter],
        progress: Progress,
        *,
        skip_reset: bool,
    ) -> ModeReport:
        entries = [plan.gpu(i) for i in plan.mode_change_gpus]
        work = _ModeWork(plan, state, writers, progress, {e.index: Counter(writers[e.index].ops) for e in entries})
        self._set_modes(work, entries)
        waiting, reboot = self._pending_modes(work, entries)
        for i in reboot:
            work.results[i] = GpuResult(
                i, R.REBOOT_REQUIRED, work.ops(i),
                error="MIG mode change is pending and this GPU cannot be reset here; reboot the node",
            )
        reset_done: tuple[int, ...] = ()
        skipped: tuple[int, ...] = ()
        if waiting and skip_reset:
            skipped = self._skip_reset(work, waiting)
        elif waiting:
            reset_done = self._reset(work, waiting)
        self._confirm_modes(work, entries)
        ordered = tuple(work.results[e.index] for e in entries)
        return ModeReport(ordered, reset=reset_done, reboot_required=tuple(reboot), reset_skipped=skipped)

    def _undo_mode(self, work: _ModeWork, index: int, error: str) -> GpuResult:
        return self._undo(work.state.gpu(index), work.writers[index], work.progress, error, work.start_ops[index])

    def _set_modes(self, work: _ModeWork, entries: list[GpuPlanEntry]) -> None:
        """Write the wanted mode on every GPU at once; a GPU that fails is rolled back."""
        failures = self._parallel(lambda entry: self._set_mode(work, entry), entries)
        for entry, failure in zip(entries, failures, strict=True):
            if failure is not None:
                work.results[entry.index] = failure

    def _set_mode(self, work: _ModeWork, entry: GpuPlanEntry) -> GpuResult | None:
        view = work.state.gpu(entry.index)
        writer = work.writers[entry.index]
        want = bool(entry.mode_target)
        try:
            if not want and view.mode.current:
                # NVML refuses to disable MIG while GPU instances exist.
                for gi in view.instances:
                    work.progress.gpu(entry.index, f"destroying GPU instance {gi.id} at slot {gi.start}", "destroy")
                    writer.destroy_instance(gi)
            if entry.mode_pending != want:
                work.progress.gpu(entry.index, f"setting MIG mode {'enabled' if want else 'disabled'}", "set_mode")
                writer.set_mode(want, previous=entry.mode_pending)
        except Exception as exc:  # a bug too must roll this GPU back, not leave it half-switched
            if _is_bug(exc):
                log.error("GPU %d: unexpected error setting MIG mode", entry.index, exc_info=exc)
            return self._undo_mode(work, entry.index, f"setting MIG mode failed: {exc}")
        return None

    def _pending_modes(self, work: _ModeWork, entries: list[GpuPlanEntry]) -> tuple[list[int], list[int]]:
        """Which GPUs now wait for a reset to activate the mode, and which of
        them cannot be reset here (a reboot activates it)."""
        waiting: list[int] = []
        reboot: list[int] = []
        for entry in entries:
            if entry.index in work.results:
                continue
            try:
                mode = self.backend.mig_mode(entry.index)
                if mode.current != mode.pending and not self.backend.reset_available(entry.index):
                    reboot.append(entry.index)
                elif mode.current != mode.pending:
                    waiting.append(entry.index)
            except Exception as exc:  # a bug too must roll this GPU back
                if _is_bug(exc):
                    log.error("GPU %d: unexpected error reading MIG mode", entry.index, exc_info=exc)
                work.results[entry.index] = self._undo_mode(
                    work, entry.index, f"cannot read MIG mode after setting it: {exc}"
                )
        return waiting, reboot

    @staticmethod
    def _skip_reset(work: _ModeWork, waiting: list[int]) -> tuple[int, ...]:
        for i in waiting:
            work.results[i] = GpuResult(
                i, R.MODE_PENDING, work.ops(i),
                error="MIG mode change is pending a GPU reset (reset skipped on request)",
            )
        return tuple(waiting)

    def _confirm_modes(self, work: _ModeWork, entries: list[GpuPlanEntry]) -> None:
        """Read back the mode of every GPU not yet decided: applied, or rolled back."""
        for entry in entries:
            i = entry.index
            if i in work.results:
                continue
            try:
                mode = self.backend.mig_mode(i)
            except Exception as exc:  # a bug too must roll this GPU back
                if _is_bug(exc):
                    log.error("GPU %d: unexpected error reading MIG mode", i, exc_info=exc)
                work.results[i] = self._undo_mode(work, i, f"cannot read MIG mode: {exc}")
                continue
            if mode.current == entry.mode_target and mode.pending == entry.mode_target:
                work.results[i] = GpuResult(i, R.APPLIED, work.ops(i))
            else:
                work.results[i] = self._undo_mode(
                    work, i,
                    f"MIG mode is {_onoff(mode.current)} ({_onoff(mode.pending)} pending) after the change, "
                    f"wanted {_onoff(bool(entry.mode_target))}",
                )

    def _reset(self, work: _ModeWork, indices: list[int]) -> tuple[int, ...]:
        work.progress.node(f"resetting GPU(s) {', '.join(map(str, indices))} to activate the MIG mode change", "reset")
        error: str | None = None
        try:
            self.backend.reset(list(indices))
        except Exception as exc:  # a bug too: the GPUs are read back below and rolled back
            if _is_bug(exc):
                log.error("unexpected error resetting GPU(s) %s", indices, exc_info=exc)
            error = str(exc)
        done = []
        for i in indices:
            want = work.plan.gpu(i).mode_target
            try:
                mode = self.backend.mig_mode(i)
            except Exception as exc:  # a bug too must roll this GPU back
                if _is_bug(exc):
                    log.error("GPU %d: unexpected error reading MIG mode", i, exc_info=exc)
                work.results[i] = self._undo_mode(work, i, f"cannot read MIG mode after reset: {exc}")
                continue
            if mode.current == want and mode.pending == want:
                work.writers[i].record_reset()
                done.append(i)
            else:
                why = f"GPU reset failed: {error}" if error else f"MIG mode still {_onoff(mode.current)} after reset"
                work.results[i] = self._undo_mode(work, i, why)
        return tuple(done)

    def _geometry_phase(
        self,
        config: MigConfig,
        state0: NodeState,
        writers: dict[int, GpuWriter],
        progress: Progress,
        *,
        skip: set[int],
        before: PhaseHook | None = None,
    ) -> GeometryReport:
        # Re-observe: the mode phase (a reset) changed what is there.
        try:
            state = self.observe()
            plan = plan_node(config, state)
        except Exception as exc:
            # Without a fresh view nothing can be built safely; undo what the
            # mode phase did so no GPU is left switched but empty.
            undone = self._undo_unplanned(state0, writers, progress, skip, exc)
            if not undone:
                raise
            if _is_bug(exc):
                log.error("unexpected error planning MIG devices", exc_info=exc)
            return GeometryReport(tuple(undone))
        jobs, results = self._geometry_jobs(plan, state, skip)
        before_views = {v.index: v for v in state0.gpus}
        if before is not None and any(e.needs_geometry_change for _, e in jobs):
            self._run_before_geometry(before, plan, writers, before_views, progress)

        def one(job: tuple[GpuView, GpuPlanEntry]) -> GpuResult:
            view, entry = job
            writer = writers.get(view.index) or GpuWriter(self.backend, view.index, progress.for_gpu(view.index))
            return self._apply_gpu(view, entry, writer, before_views.get(view.index, view), progress)

        for (view, _), res in zip(jobs, self._parallel(one, jobs), strict=True):
            results[view.index] = res
        order = [e.index for e in plan.gpus if e.index in results]
        return GeometryReport(tuple(results[i] for i in order))

    def _undo_unplanned(
        self, state0: NodeState, writers: dict[int, GpuWriter], progress: Progress, skip: set[int], exc: Exception
    ) -> list[GpuResult]:
        """Roll back every GPU the mode phase wrote on (those in ``skip`` stay)."""
        undone: list[GpuResult] = []
        for i, writer in writers.items():
            if i in skip or not writer.wrote:
                continue
            undone.append(self._undo(state0.gpu(i), writer, progress, f"cannot plan MIG devices: {exc}", Counter(writer.ops)))
        return undone

    @staticmethod
    def _geometry_jobs(
        plan: NodePlan, state: NodeState, skip: set[int]
    ) -> tuple[list[tuple[GpuView, GpuPlanEntry]], dict[int, GpuResult]]:
        """The GPUs to lay out, and the results of those skipped for want of MIG mode."""
        jobs: list[tuple[GpuView, GpuPlanEntry]] = []
        results: dict[int, GpuResult] = {}
        for entry in plan.gpus:
            if not entry.selected or entry.index in skip:
                continue
            view = state.gpu(entry.index)
            if entry.mode_target and not (view.mode.current and view.mode.pending):
                results[entry.index] = GpuResult(
                    entry.index, R.SKIPPED, error="MIG mode is not enabled on this GPU; no MIG devices can be created"
                )
                continue
            jobs.append((view, entry))
        return jobs, results

    def _run_before_geometry(
        self,
        before: PhaseHook,
        plan: NodePlan,
        writers: dict[int, GpuWriter],
        before_views: dict[int, GpuView],
        progress: Progress,
    ) -> None:
        """The pre-apply-config hook; when it raises, the mode changes are undone first."""
        try:
            before(plan)
        except BaseException:
            for i, writer in writers.items():
                if writer.wrote:
                    self._undo(before_views[i], writer, progress, "stopped before creating MIG devices", Counter(writer.ops))
            raise

    def _apply_gpu(
        self, view: GpuView, entry: GpuPlanEntry, writer: GpuWriter, before: GpuView, progress: Progress
    ) -> GpuResult:
        i = view.index
        start = Counter(writer.ops)
        result = entry.result
        if isinstance(result, Infeasible) or result is None:
            reason = result.reason if isinstance(result, Infeasible) else "not planned"
            return self._fail_before_write(before, writer, progress, f"cannot lay out: {reason}", start)
        kept = result.kept_uuids
        if result.is_noop:
            return GpuResult(i, R.UNCHANGED, kept_uuids=kept)
        try:
            creates = [(dev, *self._profiles(view.model, dev)) for dev in result.create]
        except ValueError as exc:
            return self._fail_before_write(before, writer, progress, str(exc), start)
        try:
            self._write_plan(view, result, creates, writer, progress)
        except Exception as exc:  # a bug too must roll this GPU back, not leave it half-built
            if _is_bug(exc):
                log.error("GPU %d: unexpected error creating MIG devices", i, exc_info=exc)
            return self._undo(before, writer, progress, str(exc), start)
        try:
            after = self.observe_gpu(view)
        except Exception as exc:  # a bug too must roll this GPU back
            if _is_bug(exc):
                log.error("GPU %d: unexpected error reading the GPU back", i, exc_info=exc)
            return self._undo(before, writer, progress, f"cannot read the GPU back after applying: {exc}", start)
        got = Counter(d.profile for d in after.devices)
        want = Counter(d.profile for d in result.target)
        if got != want:
            return self._undo(
                before, writer, progress,
                f"layout after apply is {format_devices(got)}, wanted {format_devices(want)}", start,
            )
        return GpuResult(i, R.APPLIED, _ops_since(writer, start), kept_uuids=kept)

    def _write_plan(
        self,
        view: GpuView,
        result: GpuPlan,
        creates: list[tuple[MigDevice, GiProfile, list[CiProfile]]],
        writer: GpuWriter,
        progress: Progress,
    ) -> None:
        """Destroy whole GPU instances, change the CIs of kept ones, create new ones.

        A device the plan names but the GPU no longer has is an expected
        failure (``MigManagerError``, no traceback): the caller rolls back.
        """
        i = view.index
        for dev in result.destroy:
            gi = view.instance(dev.gi_id) if dev.gi_id is not None else None
            if gi is None:
                raise MigManagerError(f"GPU instance for {dev.profile} at slot {dev.placement.start} not found")
            progress.gpu(i, f"destroying {dev.profile} at slot {dev.placement.start}", "destroy")
            writer.destroy_instance(gi)
        for change in result.adjust:
            self._adjust_gpu_instance(view, change, writer, progress)
        for dev, gi_profile, ci_profiles in creates:
            progress.gpu(i, f"creating {dev.profile} at slot {dev.placement.start}", "create")
            writer.create_instance(gi_profile.nvml_id, dev.placement.start, [ci.nvml_id for ci in ci_profiles])

    @staticmethod
    def _adjust_gpu_instance(view: GpuView, change: GiAdjust, writer: GpuWriter, progress: Progress) -> None:
        """Destroy the extra compute instances of a kept GI, then create the missing ones."""
        i = view.index
        dev = change.current
        gi = view.instance(dev.gi_id) if dev.gi_id is not None else None
        gi_profile = view.model.gi_profile_by_id(gi.profile_id) if gi is not None and view.model else None
        if gi is None or gi_profile is None:
            raise MigManagerError(f"GPU instance for {dev.profile} at slot {dev.placement.start} not found")
        progress.gpu(i, f"changing {dev.profile} at slot {dev.placement.start} into {change.target.profile}", "create")
        gone = []
        for ci in change.destroy:
            known = next((c for c in gi.compute_instances if c.id == ci.ci_id), None)
            if known is None:
                raise MigManagerError(f"compute instance {ci.ci_id} of GPU instance {gi.id} not found")
            gone.append(known)
        # smallest first, so that an undo recreates the largest first (as GpuWriter.destroy_instance)
        for known in sorted(gone, key=lambda c: (c.size, -c.start, c.id)):
            writer.destroy_compute_instance(gi.id, known)
        for name in change.create:
            ci_profile = gi_profile.ci_profile(name)
            if ci_profile is None:
                raise MigManagerError(f"{gi_profile.name} GPU instance has no compute instance profile {name}")
            writer.create_compute_instance(gi.id, ci_profile.nvml_id)

    @staticmethod
    def _profiles(model: GpuModel | None, dev: MigDevice) -> tuple[GiProfile, list[CiProfile]]:
        """The GI profile and the CI profiles, in creation order, of a planned device."""
        if model is None:
            raise ValueError(f"no MIG geometry known for this GPU; cannot create {dev.profile}")
        from_shape = shape_ci_names(dev.profile)
        if not dev.cis and from_shape == []:
            # a GI without CIs (only restore asks for one: a checkpoint had it)
            bare = model.gi_profile(dev.profile.split("[", 1)[0])
            if bare is None:
                raise ValueError(f"{model.name} has no GPU instance profile for {dev.profile}")
            return bare, []
        names = [c.profile for c in dev.cis] or from_shape or [dev.profile]
        gi_profile: GiProfile | None = None
        ci_profiles: list[CiProfile] = []
        for name in names:
            try:
                profile = MigProfile.parse(name)
            except ProfileNameError as exc:
                raise ValueError(str(exc)) from None
            gi_profile = model.gi_profile(profile.gi_name)
            ci_profile = gi_profile.ci_profile(profile.ci_name) if gi_profile else None
            if gi_profile is None or ci_profile is None:
                raise ValueError(f"{model.name} has no MIG profile {name}")
            ci_profiles.append(ci_profile)
        assert gi_profile is not None  # names is never empty
        return gi_profile, ci_profiles

    # --- outcomes ------------------------------------------------------------

    def _fail_before_write(
        self, before: GpuView, writer: GpuWriter, progress: Progress, error: str, start: Counter[str]
    ) -> GpuResult:
        # Nothing written in this phase, but an earlier phase of the same
        # apply may have changed the mode: undo that too.
        if writer.wrote:
            return self._undo(before, writer, progress, error, start)
        return GpuResult(before.index, R.FAILED, error=error)

    def _undo(self, before: GpuView, writer: GpuWriter, progress: Progress, error: str, start: Counter[str]) -> GpuResult:
        i = before.index
        error = error.removeprefix(f"GPU {i}: ")  # backend errors name the GPU already
        log.warning("GPU %d: %s; rolling back to its previous layout", i, error)
        progress.gpu(i, f"failed ({error}); rolling back", "rollback")
        undo_errors = writer.rollback()
        try:
            after = self.observe_gpu(before)
            restored = layout_key(after) == layout_key(before)
            now = format_devices(Counter(d.profile for d in after.devices))
            if after.mode != before.mode:
                now = f"{now}, {_mode_text(after)} (was {_mode_text(before)}): reset the GPU or reboot to finish"
        except Exception as exc:  # a bug too: the result must still say the rollback is unconfirmed
            if _is_bug(exc):
                log.error("GPU %d: unexpected error reading the GPU after rollback", i, exc_info=exc)
            restored, now = False, f"unreadable ({exc})"
        ops = _ops_since(writer, start)
        if restored and not undo_errors:
            return GpuResult(i, R.ROLLED_BACK, ops, error=error)
        why = "; ".join(undo_errors) if undo_errors else f"layout after rollback is {now}"
        return GpuResult(i, R.ROLLBACK_FAILED, ops, error=error, rollback_error=why)

    def _unchanged(self, state: NodeState, plan: NodePlan, index: int) -> GpuResult:
        entry = plan.gpu(index)
        kept = entry.result.kept_uuids if isinstance(entry.result, GpuPlan) else ()
        return GpuResult(index, R.UNCHANGED, kept_uuids=kept)
