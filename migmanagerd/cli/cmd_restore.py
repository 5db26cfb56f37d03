"""``migmanagerd restore``: bring back the layout a ``checkpoint`` saved, through
the same run as ``apply`` (hooks, GPU clients, journal, run lock)."""

from __future__ import annotations

import argparse

from migmanagerd.cli.cmd_checkpoint import add_checkpoint_file, checkpoint_path
from migmanagerd.cli.cmd_service import add_change_options
from migmanagerd.cli.common import add_hooks_file


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "restore",
        help="restore the MIG mode and layout saved by 'checkpoint' (hooks and GPU clients included)",
        description="Restore every GPU of a checkpoint file to its saved MIG mode and its GPU instances at their "
        "saved placements, with their compute instances, the way 'apply' changes a node (hooks, GPU clients "
        "stopped and restarted, rollback). The boot-time selection is not changed. Exit 0 restored (or already "
        "so), 1 failed, 2 bad checkpoint file or a GPU it names is not in this node (nothing changed).",
    )
    add_checkpoint_file(p)
    add_hooks_file(p)
    add_change_options(p, "restore")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from migmanagerd.service.options import ServiceOptions
    from migmanagerd.service.restore import RestoreRun

    path = checkpoint_path(args)
    options = ServiceOptions(
        hooks_file=args.hooks_file,
        mode_only=args.mode_only,
        skip_reset=args.skip_reset,
        allow_reboot=not args.no_reboot,
        hook_timeout_s=args.hook_timeout,
        backend=args.backend,
    )
    service = RestoreRun(path, options)
    outcome = service.run()
    for result in service.gpu_results():
        if result.status != "unchanged" or result.error:
            print(result.describe())
    if outcome.exit_code == 0:
        print(outcome.message)
        print("MIG configuration restored successfully")
    return outcome.exit_code
