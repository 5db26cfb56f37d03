"""The run's two touch points with the world beyond the node: drain SLURM
before a change, and hand the run's result to the integrations after it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.apply.report import GpuResult
from migmanagerd.clients.notify import Notifier
from migmanagerd.errors import EXIT_OK, MigManagerError
from migmanagerd.integrations.layout import RunSummary
from migmanagerd.integrations.run import make_slurm_drain, run_integrations
from migmanagerd.integrations.settings import IntegrationSettings
from migmanagerd.service.layout import node_layout
from migmanagerd.service.lazy_systemd import LazySystemd
from migmanagerd.service.options import RunOutcome
from migmanagerd.service.state import State, StateStore

# how long a restart of slurmd (after its gres.conf changed) may take
SLURMD_RESTART_TIMEOUT_S = 90.0


def drain_before_change(settings: IntegrationSettings, config: str, systemd: LazySystemd, notify: Notifier) -> None:
    """Drain the SLURM node (when configured); raises when it does not drain in time."""
    if not settings.slurm.enabled:
        return
    drain = make_slurm_drain(settings, unit_active=systemd.unit_active, progress=notify.status)
    if not drain.before_change(config):
        raise MigManagerError(f"config '{config}': the SLURM node did not drain in time; nothing changed")


def total_operations(results: Iterable[GpuResult]) -> dict[str, int]:
    ops: dict[str, int] = {}
    for r in results:
        for kind, n in r.operations.items():
            ops[kind] = ops.get(kind, 0) + n
    return ops


def report_run(
    settings: IntegrationSettings | None,
    engine: ApplyEngine,
    store: StateStore,
    systemd: LazySystemd,
    summary: RunSummary,
) -> None:
    """Run the enabled integrations on the node as it is now; their report goes to state.json."""
    if settings is None or not settings.any_enabled:
        return

    def restart_unit(unit: str) -> None:
        systemd.get().restart(unit, SLURMD_RESTART_TIMEOUT_S)

    def enqueue_restart(unit: str) -> None:
        # ordered after nvidia-gpu-reset.target on a real node: waiting
        # for it from inside this unit's start would deadlock the boot
        systemd.get().enqueue_restart(unit)

    result = run_integrations(
        settings, node_layout(engine.observe()), summary,
        restart_unit=restart_unit, enqueue_restart=enqueue_restart, unit_exists=systemd.unit_exists,
        unit_active=systemd.unit_active,
    )

    def change(s: State) -> State:
        return replace(s, integrations=result)

    store.update(change)


def run_summary(
    config: str, outcome: RunOutcome, results: Iterable[GpuResult], *, duration_s: float, clients_stopped: int,
    changed: bool,
) -> RunSummary:
    return RunSummary(
        config=config, matched=outcome.exit_code == EXIT_OK and outcome.result == "ok",
        result=outcome.result, duration_s=duration_s, clients_stopped=clients_stopped,
        operations=total_operations(results), changed=changed,
    )
