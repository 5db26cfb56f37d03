"""The one entry point the service calls after each run (and one before a change).

``make_slurm_drain`` gives the service its before-change decision;
``run_integrations`` does everything after the run and returns a JSON-able
report for state.json's ``integrations`` field. An integration that fails is
reported and logged at warning level; it never fails the run or raises.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

from migmanagerd.errors import MigManagerError
from migmanagerd.integrations.cdi import cdi_action, perform_cdi_action
from migmanagerd.integrations.drain import SlurmDrain
from migmanagerd.integrations.layout import NodeLayout, RunSummary
from migmanagerd.integrations.metrics import write_metrics
from migmanagerd.integrations.scontrol import Scontrol
from migmanagerd.integrations.settings import IntegrationSettings
from migmanagerd.integrations.slurm import apply_slurm
from migmanagerd.log import get_logger
from migmanagerd.proctree import run_bounded

log = get_logger("integrations")


def make_slurm_drain(
    settings: IntegrationSettings,
    *,
    unit_active: Callable[[str], bool] | None = None,
    progress: Callable[[str], None] | None = None,
    scontrol: Scontrol | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> SlurmDrain:
    """A drain whose ``before_change(config)`` says whether the service may reconfigure.

    With Slurm or its drain disabled, ``before_change`` returns True at once.
    ``progress`` is called on every poll while jobs run (for sd_notify STATUS=
    and EXTEND_TIMEOUT_USEC=).
    """
    s = settings.slurm
    slurmd_active = (lambda: unit_active(s.slurmd_unit)) if unit_active is not None else None
    return SlurmDrain(
        s,
        scontrol or Scontrol(s.scontrol, timeout_s=s.command_timeout_s),
        slurmd_active=slurmd_active,
        progress=progress,
        sleep=sleep,
        monotonic=monotonic,
    )


def run_integrations(
    settings: IntegrationSettings,
    layout: NodeLayout,
    summary: RunSummary,
    *,
    restart_unit: Callable[[str], None],
    enqueue_restart: Callable[[str], None],
    unit_exists: Callable[[str], bool],
    unit_active: Callable[[str], bool] | None = None,
    scontrol: Scontrol | None = None,
    run_command: Callable[..., subprocess.CompletedProcess[str]] = run_bounded,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Run every enabled integration; returns {"slurm": {...}, "cdi": {...}, "metrics": {...}}."""
    report: dict[str, Any] = {}

    if settings.slurm.enabled:
        report["slurm"] = _guard("slurm", lambda: apply_slurm(
            settings.slurm, layout, summary,
            drain=make_slurm_drain(settings, unit_active=unit_active, scontrol=scontrol),
            restart_unit=restart_unit, unit_active=unit_active,
        ))
    else:
        report["slurm"] = {"enabled": False}

    if settings.cdi.enabled:
        def cdi() -> dict[str, Any]:
            unit = settings.cdi.unit
            exists = unit_exists(unit) if unit else False
            action = cdi_action(settings.cdi, summary.changed, exists)
            return {"enabled": True, **perform_cdi_action(action, settings.cdi,
                                                           enqueue_restart=enqueue_restart, run=run_command)}
        report["cdi"] = _guard("cdi", cdi)
    else:
        report["cdi"] = {"enabled": False}

    if settings.metrics.enabled:
        report["metrics"] = _guard("metrics", lambda: {
            "enabled": True, **write_metrics(settings.metrics.path, layout, summary, now=now())})
    else:
        report["metrics"] = {"enabled": False}

    return report


def _guard(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one integration; any exception becomes a failed entry, never the caller's problem."""
    try:
        return fn()
    except (MigManagerError, OSError, subprocess.SubprocessError) as exc:
        message = str(exc) or type(exc).__name__
        log.warning("%s integration failed: %s", name, message)
    # Blind on purpose: the integrations run after the MIG layout is applied, and
    # a bug in one must neither fail that run nor stop the others; the
    # traceback is logged because nothing else would show where the bug is.
    except Exception as exc:
        message = str(exc) or type(exc).__name__
        log.error("%s integration failed unexpectedly: %s", name, message, exc_info=True)
    return {"enabled": True, "status": "failed", "error": message}
