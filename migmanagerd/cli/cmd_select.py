"""``migmanagerd select NAME``: make NAME the config every boot applies."""

from __future__ import annotations

import argparse
import os

from migmanagerd.cli.common import add_backend, add_debug
from migmanagerd.errors import EXIT_FAILED, EXIT_OK
from migmanagerd.log import get_logger

log = get_logger("select")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "select",
        help="persist the selected config for every boot (writes the unit's drop-in)",
        description="Check that NAME exists and that the next boot could apply it (files present, trusted and "
        "valid; the config selects a GPU of this node and fits it), then write "
        "/etc/systemd/system/nvidia-mig-manager.service.d/override.conf "
        '(Environment="MIG_PARTED_SELECTED_CONFIG=NAME", plus the config and hooks files when they are not '
        "the defaults) atomically, reload systemd and check that the unit sees the selection. "
        "Nothing is applied until the unit runs again (systemctl restart nvidia-mig-manager) or the next boot. "
        "Exit 0 selected, 1 written but systemd does not see it, 2 refused (nothing changed).",
    )
    p.add_argument("name", metavar="NAME", help="config name in the config file")
    p.add_argument(
        "-f", "--config-file", default=os.environ.get("MIG_PARTED_CONFIG_FILE") or None,
        help="config file to select from, kept in the drop-in (env MIG_PARTED_CONFIG_FILE; default: the one "
        "the drop-in names, else /etc/nvidia-mig-manager/config.yaml)",
    )
    p.add_argument(
        "-k", "--hooks-file", default=os.environ.get("MIG_PARTED_HOOKS_FILE") or None,
        help="hooks file for the boot, kept in the drop-in (env MIG_PARTED_HOOKS_FILE; default: the one the "
        "drop-in names, else /etc/nvidia-mig-manager/hooks.yaml if it exists)",
    )
    p.add_argument("--no-check", action="store_true", help="do not check that NAME selects and fits this node's GPUs")
    p.add_argument("--no-reload", action="store_true", help="do not reload systemd after writing the drop-in")
    add_backend(p)
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from migmanagerd.service.selecting import SelectRequest, select_config

    result = select_config(SelectRequest(
        name=args.name, config_file=args.config_file, hooks_file=args.hooks_file,
        check_fit=not args.no_check, reload=not args.no_reload, backend=args.backend,
    ))
    files = "".join(f", {what} {path}" for what, path in (("config file", result.config_file),
                                                          ("hooks file", result.hooks_file)) if path)
    print(f"selected config '{result.name}'{files}" + ("" if result.changed else " (unchanged)") + f" in {result.dropin}")
    if result.confirmed is False:
        for line in result.notes:
            log.error("%s", line)
        log.error("systemd does not see this selection; the next boot would apply something else")
        return EXIT_FAILED
    for line in result.notes:
        log.warning("%s", line)
    print("apply it now with: systemctl restart nvidia-mig-manager (or at the next boot)")
    return EXIT_OK
