"""Journaled backend writes on one GPU, and their undo.

Every write the engine makes on a GPU goes through a ``GpuWriter``, which
records the inverse of each step as it succeeds. When a later step fails, the
writer undoes the recorded steps newest first, so the GPU returns to the layout
it had before the apply instead of being left half-built. Undo is best effort:
it keeps going past a failed step and reports every failure.

GPU-instance ids are chosen by the driver, so a GPU instance recreated during
undo usually gets a new id; undo maps old ids to new ones for the steps that
refer to them (the compute instances created inside it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from migmanagerd.errors import MigManagerError
from migmanagerd.gpu.backend import Backend, BackendError, ComputeInstance, GpuInstance
from migmanagerd.log import get_logger

log = get_logger("apply")


@dataclass(frozen=True)
class _DestroyedCi:
    gi_id: int
    profile_id: int


@dataclass(frozen=True)
class _DestroyedGi:
    gi_id: int
    profile_id: int
    start: int


@dataclass(frozen=True)
class _CreatedGi:
    gi_id: int


@dataclass(frozen=True)
class _CreatedCi:
    gi_id: int
    ci_id: int


@dataclass(frozen=True)
class _SetMode:
    previous: bool  # the pending mode before this write


@dataclass(frozen=True)
class _Reset:
    pass


_Step = _DestroyedCi | _DestroyedGi | _CreatedGi | _CreatedCi | _SetMode | _Reset

Progress = Callable[[str], None]


def _quiet(_text: str) -> None:
    pass


class GpuWriter:
    """Backend writes on GPU ``index``, counted and journaled for undo.

    One writer per GPU per apply; used from one thread at a time.
    """

    def __init__(self, backend: Backend, index: int, progress: Progress = _quiet) -> None:
        self.backend = backend
        self.index = index
        self.progress = progress
        self.ops: Counter[str] = Counter()
        self._journal: list[_Step] = []

    @property
    def wrote(self) -> bool:
        return bool(self._journal)

    # --- forward steps -------------------------------------------------------

    def destroy_instance(self, gi: GpuInstance) -> None:
        """Destroy a GPU instance: its compute instances first, as NVML requires.

        Smallest CIs go first so that undo, which recreates newest-destroyed
        first, recreates the largest first: the driver places a CI at the first
        free start, and a small CI created first can block a large one's only
        start (a 2c CI in a 3g GI can only start at slice 0).
        """
        for ci in sorted(gi.compute_instances, key=lambda c: (c.size, -c.start, c.id)):
            self.backend.destroy_compute_instance(self.index, gi.id, ci.id)
            self.ops["destroy_ci"] += 1
            self._journal.append(_DestroyedCi(gi.id, ci.profile_id))
        self.backend.destroy_gpu_instance(self.index, gi.id)
        self.ops["destroy_gi"] += 1
        self._journal.append(_DestroyedGi(gi.id, gi.profile_id, gi.start))

    def create_device(self, gi_profile_id: int, start: int, ci_profile_id: int) -> ComputeInstance:
        """Create one MIG device: a GPU instance at ``start`` holding one compute instance."""
        gi = self.backend.create_gpu_instance(self.index, gi_profile_id, start)
        self.ops["create_gi"] += 1
        self._journal.append(_CreatedGi(gi.id))
        ci = self.backend.create_compute_instance(self.index, gi.id, ci_profile_id)
        self.ops["create_ci"] += 1
        self._journal.append(_CreatedCi(gi.id, ci.id))
        return ci

    def destroy_compute_instance(self, gi_id: int, ci: ComputeInstance) -> None:
        """Destroy one compute instance of a GPU instance that stays."""
        self.backend.destroy_compute_instance(self.index, gi_id, ci.id)
        self.ops["destroy_ci"] += 1
        self._journal.append(_DestroyedCi(gi_id, ci.profile_id))

    def create_compute_instance(self, gi_id: int, ci_profile_id: int) -> ComputeInstance:
        """Create one compute instance in an existing GPU instance."""
        ci = self.backend.create_compute_instance(self.index, gi_id, ci_profile_id)
        self.ops["create_ci"] += 1
        self._journal.append(_CreatedCi(gi_id, ci.id))
        return ci

    def create_instance(self, gi_profile_id: int, start: int, ci_profile_ids: Sequence[int]) -> list[ComputeInstance]:
        """Create a GPU instance at ``start`` and its compute instances in the given order."""
        gi = self.backend.create_gpu_instance(self.index, gi_profile_id, start)
        self.ops["create_gi"] += 1
        self._journal.append(_CreatedGi(gi.id))
        out = []
        for ci_profile_id in ci_profile_ids:
            ci = self.backend.create_compute_instance(self.index, gi.id, ci_profile_id)
            self.ops["create_ci"] += 1
            self._journal.append(_CreatedCi(gi.id, ci.id))
            out.append(ci)
        return out

    def set_mode(self, enabled: bool, previous: bool) -> None:
        # Journaled BEFORE the call: a driver may record the change as pending
        # and still answer with an error (IN_USE, NOT_SUPPORTED); undo must
        # then set it back, or it applies at the next reboot behind our back.
        step = _SetMode(previous)
        self._journal.append(step)
        try:
            self.backend.set_mig_mode(self.index, enabled)
        except Exception:  # re-raised: only decides whether the journal keeps the step
            if not self._mode_pending_is(enabled):
                self._journal.remove(step)  # nothing recorded: nothing to undo
            raise
        self.ops["set_mode"] += 1

    def _mode_pending_is(self, enabled: bool) -> bool:
        """Whether the GPU now has ``enabled`` pending; True when unknown (undo is harmless)."""
        try:
            return self.backend.mig_mode(self.index).pending == enabled
        except MigManagerError:  # unreadable: keep the step, undo re-sets the old mode
            return True

    def record_reset(self) -> None:
        """The engine resets several GPUs in one call; each GPU's writer notes it."""
        self.ops["reset"] += 1
        self._journal.append(_Reset())

    # --- undo ----------------------------------------------------------------

    def rollback(self) -> list[str]:
        """Undo every journaled step, newest first. Returns the failures (empty: all undone)."""
        errors: list[str] = []
        gi_ids: dict[int, int] = {}  # old GI id -> id of its recreation
        was_reset = False
        for step in reversed(self._journal):
            if isinstance(step, _Reset):
                # A reset cannot be undone by itself; the mode step before
                # it is, and then needs a reset of its own (_undo_step).
                was_reset = True
                continue
            try:
                self._undo_step(step, gi_ids, errors, was_reset=was_reset)
            except Exception as exc:  # best effort, a bug too: keep undoing the rest
                if not isinstance(exc, MigManagerError):
                    log.error("GPU %d: unexpected error undoing a step", self.index, exc_info=exc)
                errors.append(str(exc))
        self._journal.clear()
        return errors

    def _undo_step(self, step: _Step, gi_ids: dict[int, int], errors: list[str], *, was_reset: bool) -> None:
        """Undo one journaled step; a recreated GPU instance's new id goes into ``gi_ids``."""

        def gid(old: int) -> int:
            return gi_ids.get(old, old)

        if isinstance(step, _CreatedCi):
            self.progress(f"rollback: destroying compute instance {step.ci_id} in GPU instance {gid(step.gi_id)}")
            self.backend.destroy_compute_instance(self.index, gid(step.gi_id), step.ci_id)
            self.ops["destroy_ci"] += 1
        elif isinstance(step, _CreatedGi):
            self.progress(f"rollback: destroying GPU instance {gid(step.gi_id)}")
            self.backend.destroy_gpu_instance(self.index, gid(step.gi_id))
            self.ops["destroy_gi"] += 1
        elif isinstance(step, _DestroyedGi):
            self.progress(f"rollback: recreating GPU instance at slot {step.start}")
            gi = self.backend.create_gpu_instance(self.index, step.profile_id, step.start)
            self.ops["create_gi"] += 1
            gi_ids[step.gi_id] = gi.id
        elif isinstance(step, _DestroyedCi):
            self.progress(f"rollback: recreating compute instance in GPU instance {gid(step.gi_id)}")
            self.backend.create_compute_instance(self.index, gid(step.gi_id), step.profile_id)
            self.ops["create_ci"] += 1
        elif isinstance(step, _SetMode):
            self.progress(f"rollback: setting MIG mode back to {'enabled' if step.previous else 'disabled'}")
            self.backend.set_mig_mode(self.index, step.previous)
            self.ops["set_mode"] += 1
            if was_reset:
                self._reset_to(step.previous, errors)

    def _reset_to(self, enabled: bool, errors: list[str]) -> None:
        """Activate the mode just set back with a reset, as the apply's own
        change was; when that is impossible the GPU is left with the old mode
        pending (the result says so: ``rollback-failed``)."""
        mode = self.backend.mig_mode(self.index)
        if mode.current == mode.pending:
            return
        pending = f"MIG mode {'enabled' if enabled else 'disabled'} is set back but pending a GPU reset"
        if not self.backend.reset_available(self.index):
            errors.append(f"{pending}, which is not available here: reboot the node to finish")
            return
        self.progress("rollback: resetting GPU")
        try:
            self.backend.reset([self.index])
        except BackendError as exc:  # reported in the result; the rest is still undone
            errors.append(f"{pending}, which failed ({exc}): reset the GPU or reboot to finish")
            return
        self.ops["reset"] += 1
