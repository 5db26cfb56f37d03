"""``migmanagerd service``: what nvidia-mig-manager.service runs at every boot."""

from __future__ import annotations

import argparse
import os

from migmanagerd.cli.common import (
    add_backend,
    add_config_file,
    add_debug,
    add_hooks_file,
    add_mode_only,
    add_selected_config,
    env_flag,
)
from migmanagerd.service.run import ServiceOptions
from migmanagerd.spec.limits import timeout_problem


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `service` and `apply`, which run the same flow."""
    add_config_file(p)
    add_selected_config(p)
    add_hooks_file(p)
    add_change_options(p, "apply")


def add_change_options(p: argparse.ArgumentParser, command: str) -> None:
    """How a run changes the node (mode switch, reset, reboot, hooks): every
    command that runs the service flow, `restore` included, takes the same."""
    add_mode_only(p, command)
    p.add_argument(
        "-s", "--skip-reset", action="store_true", default=env_flag("MIG_PARTED_SKIP_RESET"),
        help="do not reset GPUs after a MIG mode change; it stays pending (env MIG_PARTED_SKIP_RESET)",
    )
    p.add_argument(
        "--no-reboot", action="store_true", default=env_flag("MIGMANAGERD_NO_REBOOT"),
        help="never reboot the node for a MIG mode change that needs one (env MIGMANAGERD_NO_REBOOT)",
    )
    # a string default goes through `type` only when this command is parsed,
    # so a bad MIGMANAGERD_HOOK_TIMEOUT is a usage error of `service`/`apply`
    # (exit 2) instead of a traceback from every command
    p.add_argument(
        "--hook-timeout", type=_seconds, metavar="SECONDS",
        default=os.environ.get("MIGMANAGERD_HOOK_TIMEOUT") or "120",
        help="time limit for each hook (default 120; env MIGMANAGERD_HOOK_TIMEOUT)",
    )
    add_backend(p)
    add_debug(p)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds (--hook-timeout or MIGMANAGERD_HOOK_TIMEOUT)") from None
    problem = timeout_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"'{text}': {problem} (--hook-timeout or MIGMANAGERD_HOOK_TIMEOUT)")
    return value


def options_from_args(args: argparse.Namespace, *, persist_selection: bool) -> ServiceOptions:
    from migmanagerd.cli.persisted_args import fill_from_persisted

    # without -c/-f/-k: what the unit would use (its drop-in), not just the defaults
    persisted = fill_from_persisted(args)
    return ServiceOptions(
        config_file=args.config_file,
        hooks_file=args.hooks_file,
        selected_config=args.selected_config or persisted.fallback,
        name_fallback=persisted.applies,
        mode_only=args.mode_only,
        skip_reset=args.skip_reset,
        allow_reboot=not args.no_reboot,
        persist_selection=persist_selection,
        hook_timeout_s=args.hook_timeout,
        backend=args.backend,
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "service",
        help="converge the node to the selected config (run by nvidia-mig-manager.service)",
        description="The boot-time run: restart GPU clients an interrupted run left stopped, check the selected "
        "config fits, and only if the node differs: run hooks, stop GPU clients, apply MIG mode and devices, "
        "restart the clients, record state.json. Exit 0 applied (or nothing to do), 1 failed, 2 bad input "
        "(nothing changed).",
    )
    add_run_options(p)
    p.add_argument(
        "--rearm-reboot", action="store_true",
        help="forget the reboot guard's marker, so the next run may reboot once more, and exit",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from migmanagerd.service.paths import NodePaths
    from migmanagerd.service.reboot_guard import rearm
    from migmanagerd.service.run import ServiceRun
    from migmanagerd.service.state import StateStore

    if args.rearm_reboot:
        had = rearm(StateStore(NodePaths.from_env()))
        print("reboot guard re-armed" if had else "reboot guard was not armed; nothing to do")
        return 0
    return ServiceRun(options_from_args(args, persist_selection=False)).run().exit_code
