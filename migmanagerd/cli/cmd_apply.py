"""``migmanagerd apply``: make the node match the selected config (MIG mode, then MIG devices).

nvidia-mig-parted compatible flags and environment. Hooks (``-k``) are
accepted here and run by the service wrapper; ``run_apply`` is the one place
the engine is called, so the service can wrap it.
"""

from __future__ import annotations

import argparse
import json

from migmanagerd.apply.report import ApplyReport
from migmanagerd.cli.common import add_backend, add_config_file, add_debug, add_hooks_file, add_selected_config
from migmanagerd.cli.selection import Fallback, env_flag, load_selection, open_engine
from migmanagerd.log import get_logger

log = get_logger("apply")


def add_mode_only(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "-m", "--mode-only", action="store_true", default=env_flag("MIG_PARTED_MODE_CHANGE_ONLY"),
        help=f"only {what} the MIG mode, not the MIG devices (env MIG_PARTED_MODE_CHANGE_ONLY)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "apply",
        help="apply the selected MIG config to this node",
        description="Apply the selected MIG config: switch MIG mode where needed (GPU reset), then create and "
        "destroy only the MIG devices that differ. Exit 0 applied, 1 failed (per-GPU result printed), "
        "2 bad config or the config does not fit (nothing changed).",
    )
    add_config_file(p)
    add_selected_config(p)
    add_hooks_file(p)
    add_mode_only(p, "apply")
    p.add_argument(
        "-s", "--skip-reset", action="store_true", default=env_flag("MIG_PARTED_SKIP_RESET"),
        help="do not reset GPUs after a MIG mode change; the change stays pending (env MIG_PARTED_SKIP_RESET)",
    )
    p.add_argument("--json", action="store_true", help="print the per-GPU report as JSON")
    add_backend(p)
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_apply(args)


def run_apply(args: argparse.Namespace, *, notify=None, fallback: Fallback | None = None, **phase_hooks) -> int:
    report = apply_selected(args, notify=notify, fallback=fallback, **phase_hooks)
    print_report(report, as_json=getattr(args, "json", False))
    return report.exit_code


def apply_selected(
    args: argparse.Namespace, *, notify=None, fallback: Fallback | None = None, before_mode=None, before_geometry=None
) -> ApplyReport:
    """Select the config (flags/env/fallback), open the backend and apply; the report, unprinted.

    ``before_mode``/``before_geometry`` are passed to ``ApplyEngine.apply``
    (where the pre-apply-mode / pre-apply-config hooks belong)."""
    _, config = load_selection(args, fallback=fallback)
    engine = open_engine(args, notify=notify)
    try:
        return engine.apply(
            config, mode_only=args.mode_only, skip_reset=args.skip_reset,
            before_mode=before_mode, before_geometry=before_geometry,
        )
    finally:
        engine.backend.close()


def print_report(report: ApplyReport, *, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    for result in report.gpus:
        if result.status != "unchanged" or result.error:
            print(result.describe())
    print(report.summary())
