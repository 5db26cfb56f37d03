"""One apply of one config to a node: the mode phase, then the geometry phase,
over one undo journal per GPU.

The engine makes an ``ApplyRun`` from an observation and a plan
(``ApplyEngine.start``). The run owns one ``GpuWriter`` per selected GPU for
the whole apply, so when a later step fails a GPU is undone to the layout it
had when the run began — its MIG mode included, with a GPU reset where the
mode change took one — whichever phase wrote what.

The caller drives the phases and does its own work in between: ``apply()``
runs its ``before_*`` callbacks there; the boot-time service runs hooks and
stops GPU clients. A caller that cannot go on between the phases calls
``abort()``, which undoes every GPU the run wrote. ``results()`` gives one
result per GPU for the whole run.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from migmanagerd.apply import report as R
from migmanagerd.apply.nodeplan import NodePlan
from migmanagerd.apply.observe import NodeState
from migmanagerd.apply.progress import Progress
from migmanagerd.apply.report import ApplyReport, GeometryReport, GpuResult, ModeReport
from migmanagerd.apply.rollback import GpuWriter
from migmanagerd.spec.types import MigConfig

if TYPE_CHECKING:  # the engine makes runs; a run calls back into its steps
    from migmanagerd.apply.engine import ApplyEngine, PhaseHook


class ApplyRun:
    """One apply: the state it started from, its plan, and a writer per GPU."""

    def __init__(
        self,
        engine: ApplyEngine,
        config: MigConfig,
        state: NodeState,
        plan: NodePlan,
        *,
        mode_only: bool = False,
        skip_reset: bool = False,
    ) -> None:
        self.engine = engine
        self.config = config
        self.state = state  # the node before any write of this run: what undo returns to
        self.plan = plan
        self.mode_only = mode_only
        self.skip_reset = skip_reset
        self.progress = Progress(engine.notify, len(state.gpus))
        self.writers = {i: GpuWriter(engine.backend, i, self.progress.for_gpu(i)) for i in plan.selected_gpus}
        self.mode: ModeReport | None = None
        self.geometry: GeometryReport | None = None
        self._aborted: dict[int, GpuResult] = {}

    @property
    def changed(self) -> bool:
        """Some GPU was written (undone or not): e.g. a CDI spec may be stale."""
        return any(w.ops for w in self.writers.values())

    def mode_phase(self) -> ModeReport:
        """Set the MIG mode of every GPU whose mode must change (reset or
        reboot-required as the GPU allows). A GPU that fails is undone here."""
        if self.mode is not None:
            raise RuntimeError("the mode phase of this apply ran already")
        if not self.plan.mode_change_gpus:
            self.mode = ModeReport(())
        else:
            self.mode = self.engine._mode_phase(
                self.plan, self.state, self.writers, self.progress, skip_reset=self.skip_reset
            )
        return self.mode

    def geometry_phase(self, before: PhaseHook | None = None) -> GeometryReport:
        """Create and destroy MIG devices on every GPU the mode phase left fit.

        A GPU that fails is undone to the layout the run began with, a mode
        change of the mode phase included. ``before(plan)`` runs just before
        the first device write; if it raises, every GPU is undone and the
        exception propagates.
        """
        if self.geometry is not None:
            raise RuntimeError("the geometry phase of this apply ran already")
        skip = {r.index for r in self.mode.gpus if not r.ok} if self.mode else set()
        skip |= set(self._aborted)
        self.geometry = self.engine._geometry_phase(
            self.config, self.state, self.writers, self.progress, skip=skip, before=before
        )
        return self.geometry

    def apply_gpu_plan(self, index: int) -> GpuResult:
        """Lay out GPU ``index`` exactly as this run's plan says, through the
        geometry steps and this run's journal. For a plan its caller made
        (``request`` pins busy and leased instances), which the geometry phase
        would re-plan from the config; one GPU per call, so the caller decides
        the order and stops at the first failure (that GPU is undone here,
        ``abort`` undoes the others)."""
        view = self.state.gpu(index)
        return self.engine._apply_gpu(view, self.plan.gpu(index), self.writers[index], view, self.progress)

    def abort(self, why: str) -> tuple[GpuResult, ...]:
        """Undo every GPU this run wrote: the caller cannot go on (a hook or a
        client stop between the phases failed). Returns those GPUs' results."""
        done = []
        for i, writer in self.writers.items():
            if writer.wrote:
                result = self.engine._undo(self.state.gpu(i), writer, self.progress, why, Counter(writer.ops))
                self._aborted[i] = result
                done.append(result)
        return tuple(done)

    def results(self) -> tuple[GpuResult, ...]:
        """One result per GPU, by index, for the whole run (operations of both
        phases and of any undo). A GPU no phase reached while the run needed
        a change there is left out: the run stopped before it."""
        out = []
        for i in self.plan.selected_gpus:
            result = self._result(i)
            if result is not None:
                out.append(result)
        return tuple(out)

    def report(self) -> ApplyReport:
        final = ApplyReport(self.config.name, self.results(), self.mode, self.geometry)
        self.progress.node(final.summary())
        return final

    def _result(self, index: int) -> GpuResult | None:
        ops = dict(self.writers[index].ops)
        aborted = self._aborted.get(index)
        if aborted is not None:
            return GpuResult(index, aborted.status, ops, aborted.error, (), aborted.rollback_error)
        m = self.mode.result(index) if self.mode else None
        g = self.geometry.result(index) if self.geometry else None
        if m is not None and not m.ok:
            return GpuResult(index, m.status, ops, m.error, (), m.rollback_error)
        if g is not None:
            status = R.APPLIED if g.status == R.UNCHANGED and ops else g.status
            return GpuResult(index, status, ops, g.error, g.kept_uuids, g.rollback_error)
        if m is not None:
            return GpuResult(index, m.status, ops)
        entry = self.plan.gpu(index)
        reached = self.geometry is not None or self.mode_only
        if entry.needs_mode_change or (entry.needs_geometry_change and not reached):
            return None
        return self.engine._unchanged(self.state, self.plan, index)
