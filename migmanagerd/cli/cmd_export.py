"""``migmanagerd export``: the node's MIG layout, as a v1 config (YAML) or as JSON."""

from __future__ import annotations

import argparse
import json
import os

from migmanagerd.apply.configtext import render_config_file
from migmanagerd.apply.export import DEFAULT_LABEL, node_config
from migmanagerd.cli.common import add_backend, add_debug, add_output_format
from migmanagerd.cli.selection import open_engine
from migmanagerd.errors import EXIT_OK, UsageError
from migmanagerd.log import get_logger

log = get_logger("export")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "export",
        help="print this node's MIG layout as a config (or JSON)",
        description="YAML (default): a v1 config named 'current' that reproduces this node's layout when applied. "
        "JSON (--json or -o json): the node as observed, per GPU (keys in docs/engine.md).",
    )
    add_output_format(p, "yaml (a config) or json (the node); env MIG_PARTED_OUTPUT_FORMAT")
    p.add_argument("--json", action="store_true", help="same as -o json")
    p.add_argument(
        "-l", "--config-label", default=os.environ.get("MIG_PARTED_CONFIG_LABEL") or DEFAULT_LABEL,
        help=f"name of the exported config (default {DEFAULT_LABEL}; env MIG_PARTED_CONFIG_LABEL)",
    )
    add_backend(p)
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    engine = open_engine(args)
    try:
        state = engine.observe()
    finally:
        engine.backend.close()
    if args.json or args.output_format == "json":
        from migmanagerd.apply.render import node_json

        print(json.dumps(node_json(state), indent=2))
        return EXIT_OK
    if not args.config_label.strip():
        raise UsageError("--config-label must not be empty")
    config, warnings = node_config(state, args.config_label)
    for w in warnings:
        log.warning("%s", w)
    if not config.entries:
        raise UsageError("this node has no MIG-capable GPU; there is no MIG layout to export")
    print(render_config_file([config]), end="")
    return EXIT_OK
