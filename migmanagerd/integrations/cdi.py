"""Refresh the node's CDI spec after MIG devices changed.

A CDI spec (what nvidia-ctk generates for container runtimes) lists MIG devices
by UUID, so any created or destroyed instance makes it stale. The preferred way
is to restart ``nvidia-cdi-refresh.service`` where the toolkit ships it. That
unit is ordered after nvidia-gpu-reset.target on real nodes, and this service
runs before that target, so waiting for the restart from inside it would wait
forever: the restart is only enqueued (the systemd client's ``enqueue_restart``
returns at once) and systemd runs it once this unit is done. Without the unit, an
operator-configured command runs here, with a timeout.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migmanagerd.integrations.settings import CdiSettings
from migmanagerd.log import get_logger
from migmanagerd.proctree import run_bounded

log = get_logger("integrations.cdi")

NONE = "none"
RESTART_UNIT = "restart-unit"
RUN_COMMAND = "run-command"


@dataclass(frozen=True)
class CdiAction:
    kind: str  # NONE, RESTART_UNIT or RUN_COMMAND
    reason: str
    unit: str | None = None
    command: tuple[str, ...] = ()
    problem: bool = False  # enabled and needed, but nothing to do it with


def cdi_action(settings: CdiSettings, changed: bool, unit_exists: bool) -> CdiAction:
    if not settings.enabled:
        return CdiAction(NONE, "disabled")
    if not changed:
        return CdiAction(NONE, "no MIG device changed")
    if settings.unit and unit_exists:
        return CdiAction(RESTART_UNIT, f"devices changed; {settings.unit} exists", unit=settings.unit)
    if settings.command:
        why = f"{settings.unit} not installed" if settings.unit else "no unit configured"
        return CdiAction(RUN_COMMAND, f"devices changed; {why}", command=settings.command)
    missing = f"{settings.unit} is not installed" if settings.unit else "no unit is configured"
    return CdiAction(NONE, f"devices changed but {missing} and no command is configured", problem=True)


def perform_cdi_action(
    action: CdiAction,
    settings: CdiSettings,
    *,
    enqueue_restart: Callable[[str], None],
    run: Callable[..., subprocess.CompletedProcess[str]] = run_bounded,
) -> dict[str, Any]:
    report: dict[str, Any] = {"action": action.kind, "reason": action.reason}
    if action.kind == RESTART_UNIT:
        assert action.unit is not None
        enqueue_restart(action.unit)
        report.update(unit=action.unit, status="enqueued")
    elif action.kind == RUN_COMMAND:
        report["command"] = list(action.command)
        try:
            proc = run(list(action.command), capture_output=True, text=True, timeout=settings.timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            tree = getattr(exc, "tree", None)  # run_bounded says what it killed, and what it could not
            error = f"command timed out after {settings.timeout_s}s" + (f"; {tree.describe()}" if tree else "")
            report.update(status="failed", error=error)
        except OSError as exc:
            report.update(status="failed", error=f"cannot run {action.command[0]}: {exc.strerror or exc}")
        else:
            if proc.returncode == 0:
                report["status"] = "ok"
            else:
                tail = " ".join((proc.stderr or proc.stdout or "").split())[-300:]
                report.update(status="failed", error=f"command exited {proc.returncode}: {tail or 'no output'}")
    else:
        report["status"] = "skipped"
        if action.problem:
            report.update(status="failed", error=action.reason)
    if report.get("status") == "failed":
        log.warning("cdi: %s", report["error"])
    return report
