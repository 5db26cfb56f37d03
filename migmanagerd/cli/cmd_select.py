"""``migmanagerd select NAME``: make NAME the config every boot applies."""

from __future__ import annotations

import argparse
from pathlib import Path

from migmanagerd.cli.common import add_backend, add_config_file, add_debug, add_hooks_file
from migmanagerd.errors import MigManagerError
from migmanagerd.log import get_logger

log = get_logger("select")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "select",
        help="persist the selected config for every boot (writes the unit's drop-in)",
        description="Check that NAME exists and fits this node, then write "
        "/etc/systemd/system/nvidia-mig-manager.service.d/override.conf "
        '(Environment="MIG_PARTED_SELECTED_CONFIG=NAME") atomically and reload systemd. '
        "Nothing is applied until the unit runs again (systemctl restart nvidia-mig-manager) or the next boot. "
        "Exit 0 selected, 2 unknown or unfitting config (nothing changed).",
    )
    p.add_argument("name", metavar="NAME", help="config name in the config file")
    add_config_file(p)
    add_hooks_file(p)
    p.add_argument("--no-check", action="store_true", help="do not check that NAME fits this node's GPUs")
    p.add_argument("--no-reload", action="store_true", help="do not reload systemd after writing the drop-in")
    add_backend(p)
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from migmanagerd.apply.nodeplan import require_feasible
    from migmanagerd.cli.selection import open_engine
    from migmanagerd.service.paths import NodePaths
    from migmanagerd.service.selector import validate_config_name, write_selector
    from migmanagerd.service.state import StateStore
    from migmanagerd.spec.selection import pick_config, read_config_file

    paths = NodePaths.from_env()
    name = validate_config_name(args.name)
    config = pick_config(read_config_file(args.config_file), name)
    if not args.no_check:
        engine = open_engine(args)
        try:
            require_feasible(engine.plan(config))
        finally:
            engine.backend.close()
    config_file = None if Path(args.config_file) == paths.config_file else args.config_file
    changed = write_selector(paths.dropin, name, config_file, args.hooks_file)
    StateStore(paths).update(lambda s: replace(s, selected_config=name))
    print(f"selected config '{name}'" + ("" if changed else " (unchanged)") + f" in {paths.dropin}")
    if changed and not args.no_reload:
        try:
            from migmanagerd.clients.systemd import SystemdManager

            with SystemdManager.connect() as manager:
                manager.reload()
        except MigManagerError as exc:
            log.warning("systemd was not reloaded (%s); run: systemctl daemon-reload", exc)
    print("apply it now with: systemctl restart nvidia-mig-manager (or at the next boot)")
    return 0
