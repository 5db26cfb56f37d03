"""``migmanagerd assert``: is the selected config applied? Exit 0 yes, 1 no (what differs is printed)."""

from __future__ import annotations

import argparse

from migmanagerd.cli.common import add_backend, add_config_file, add_debug, add_mode_only, add_selected_config, env_flag
from migmanagerd.cli.persisted_args import fill_from_persisted
from migmanagerd.cli.selection import load_selection, open_engine
from migmanagerd.errors import EXIT_FAILED, EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "assert",
        help="check that the selected MIG config is applied",
        description="Exit 0 when every GPU the config selects has its MIG mode (current and pending) and its "
        "MIG devices (as a multiset; placement does not matter), else 1 with one line per differing GPU.",
    )
    add_config_file(p)
    add_selected_config(p)
    add_mode_only(p, "check")
    p.add_argument(
        "-a", "--valid-config", action="store_true", default=env_flag("MIG_PARTED_VALID_CONFIG"),
        help="only check that the config file is valid and has the selected config (env MIG_PARTED_VALID_CONFIG)",
    )
    add_backend(p)
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    persisted = fill_from_persisted(args)
    _, config = load_selection(args, fallback=lambda: persisted.fallback)
    if args.valid_config:
        print(f"config '{config.name}' is valid")
        return EXIT_OK
    engine = open_engine(args)
    try:
        lines = engine.assert_config(config, mode_only=args.mode_only)
    finally:
        engine.backend.close()
    what = "MIG mode settings of config" if args.mode_only else "config"
    if not lines:
        print(f"{what} '{config.name}' is applied")
        return EXIT_OK
    for line in lines:
        print(line)
    print(f"{what} '{config.name}' is not applied")
    return EXIT_FAILED
