"""After a run: rewrite the node's GRES files, restart slurmd, resume the node.

Only a run that left the node as selected rewrites the files; a failed run
leaves the last good files in place and the node drained (when migmanagerd
drained it). slurmd is restarted only when the gres file's content changed and
slurmd is running (at boot it starts after nvidia-gpu-reset.target and reads
the new file by itself).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from migmanagerd.atomic_file import write_text_atomic
from migmanagerd.errors import MigManagerError
from migmanagerd.integrations.drain import SlurmDrain
from migmanagerd.integrations.gres import gres_devices, nodename_gres, render_gres_conf, render_nodename_fragment
from migmanagerd.integrations.layout import NodeLayout, RunSummary
from migmanagerd.integrations.settings import SlurmSettings
from migmanagerd.log import get_logger

log = get_logger("integrations.slurm")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return None


def write_gres_files(settings: SlurmSettings, layout: NodeLayout, config: str | None) -> dict[str, Any]:
    """Write gres.conf lines and the NodeName Gres= fragment; report whether either changed."""
    devices = gres_devices(layout, root=settings.root, mig_files=settings.mig_files)
    gres_text = render_gres_conf(devices, config=config)
    fragment = render_nodename_fragment(devices)
    changed = _read(settings.gres_file) != gres_text
    if changed:
        write_text_atomic(settings.gres_file, gres_text)
    fragment_changed = _read(settings.nodename_file) != fragment
    if fragment_changed:
        write_text_atomic(settings.nodename_file, fragment)
    return {
        "gres_file": settings.gres_file,
        "nodename_file": settings.nodename_file,
        "gres": nodename_gres(devices),
        "devices": len(devices),
        "files_changed": changed or fragment_changed,
        "gres_changed": changed,
    }


def apply_slurm(
    settings: SlurmSettings,
    layout: NodeLayout,
    summary: RunSummary,
    *,
    drain: SlurmDrain,
    restart_unit: Callable[[str], None],
    unit_active: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {"enabled": True, "node_name": settings.node_name}
    failure: str | None = None
    if not (summary.ok and summary.matched):
        report["files"] = f"not written: run result {summary.result}"
    else:
        try:
            report.update(write_gres_files(settings, layout, summary.config))
        except (MigManagerError, OSError) as exc:
            failure = f"gres files not written: {exc}"
        if failure is None and report.get("gres_changed") and settings.restart_slurmd:
            unit = settings.slurmd_unit
            if unit_active is not None and not unit_active(unit):
                report["slurmd"] = f"{unit} not running; it reads the new file when it starts"
            else:
                try:
                    restart_unit(unit)
                    report["slurmd"] = "restarted"
                # the systemd client raises SystemdError (a MigManagerError); anything
                # else is a bug and fails the whole integration (run._guarded), which
                # leaves the node drained as well
                except (MigManagerError, OSError) as exc:
                    failure = f"restart of {unit} failed: {exc}"
    if failure:
        log.warning("slurm: %s", failure)
        report["error"] = failure
    try:
        report.update(drain.after_change(summary, failure))
    except MigManagerError as exc:
        report["node_error"] = str(exc)
        log.warning("slurm: node %s: %s", settings.node_name, exc)
    report["status"] = "failed" if ("error" in report or "node_error" in report) else "ok"
    return report
