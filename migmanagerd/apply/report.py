"""What an apply did, per GPU, in a form the CLI, the service and its state
journal can all read. Pure data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from migmanagerd.errors import EXIT_FAILED, EXIT_OK

# Per-GPU outcome.
UNCHANGED = "unchanged"  # already as wanted; no backend write
APPLIED = "applied"  # changed and now as wanted
FAILED = "failed"  # a step failed and nothing needed undoing, or undo was impossible to try
ROLLED_BACK = "rolled-back"  # a step failed; the GPU is back in its previous layout
ROLLBACK_FAILED = "rollback-failed"  # a step failed and the previous layout could not be restored
REBOOT_REQUIRED = "reboot-required"  # mode change pending; the GPU cannot be reset here
MODE_PENDING = "mode-pending"  # mode change pending because the reset was skipped (--skip-reset)
SKIPPED = "skipped"  # not attempted because an earlier phase left the GPU unfit for it

OK_STATUSES = frozenset({UNCHANGED, APPLIED})

# Operation kinds counted per GPU.
OP_KINDS = ("set_mode", "reset", "destroy_ci", "destroy_gi", "create_gi", "create_ci")


@dataclass(frozen=True)
class GpuResult:
    index: int
    status: str
    operations: Mapping[str, int] = field(default_factory=dict)  # kind -> count, only kinds that happened
    error: str | None = None
    kept_uuids: tuple[str, ...] = ()
    rollback_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    @property
    def op_count(self) -> int:
        return sum(self.operations.values())

    def describe(self) -> str:
        """One line for a person: ``GPU 2: applied (create_gi 2, create_ci 2; kept 3)``."""
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.operations.items(), key=lambda kv: OP_KINDS.index(kv[0])) if v)
        detail = ops or "no operations"
        if self.kept_uuids:
            detail += f"; kept {len(self.kept_uuids)} MIG device(s)"
        line = f"GPU {self.index}: {self.status} ({detail})"
        if self.error:
            # Backend errors already start with "GPU n: "; say it once.
            line += ": " + self.error.removeprefix(f"GPU {self.index}: ")
        if self.rollback_error:
            line += f"; rollback: {self.rollback_error}"
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "status": self.status,
            "operations": dict(self.operations),
            "error": self.error,
            "rollback_error": self.rollback_error,
            "kept_uuids": list(self.kept_uuids),
        }


def _exit_code(results: Iterable[GpuResult]) -> int:
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


class _PerGpu:
    """What every report answers from its per-GPU results (``gpus``)."""

    gpus: tuple[GpuResult, ...]

    @property
    def exit_code(self) -> int:
        return _exit_code(self.gpus)

    def result(self, index: int) -> GpuResult | None:
        for r in self.gpus:
            if r.index == index:
                return r
        return None


@dataclass(frozen=True)
class ModeReport(_PerGpu):
    gpus: tuple[GpuResult, ...]  # only GPUs whose mode had to change
    reset: tuple[int, ...] = ()  # GPUs reset (in one call)
    reboot_required: tuple[int, ...] = ()  # pending, reset impossible here
    reset_skipped: tuple[int, ...] = ()  # pending, reset skipped on request


@dataclass(frozen=True)
class GeometryReport(_PerGpu):
    gpus: tuple[GpuResult, ...]  # every GPU the config targets


@dataclass(frozen=True)
class ApplyReport(_PerGpu):
    config: str
    gpus: tuple[GpuResult, ...]  # every GPU the config targets, by index
    mode: ModeReport | None = None
    geometry: GeometryReport | None = None

    @property
    def changed(self) -> bool:
        return any(r.op_count for r in self.gpus)

    @property
    def reboot_required(self) -> tuple[int, ...]:
        return tuple(r.index for r in self.gpus if r.status == REBOOT_REQUIRED)

    @property
    def failed(self) -> tuple[int, ...]:
        return tuple(r.index for r in self.gpus if not r.ok)

    def summary(self) -> str:
        if not self.changed and self.exit_code == EXIT_OK:
            return f"config '{self.config}' already applied; nothing to do"
        if self.exit_code == EXIT_OK:
            return f"config '{self.config}' applied"
        bad = ", ".join(f"GPU {r.index} {r.status}" for r in self.gpus if not r.ok)
        return f"config '{self.config}' not fully applied: {bad}"

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "exit_code": self.exit_code,
            "gpus": [r.to_json() for r in self.gpus],
        }
