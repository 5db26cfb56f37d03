"""``nvidia-mig-parted``: NVIDIA's command line, served by migmanagerd.

The package replaces nvidia-mig-manager, so scripts, Ansible roles and the
commands of nvidia-mig-parted's README must keep working: the same commands
(``apply``, ``assert``, ``export``, ``generate-config``, and the others
migmanagerd has), the same flags before and after the command, the same
``MIG_PARTED_*`` variables. Where the peer's contract differs from
``migmanagerd``'s, this front end follows the peer:

* the exit status is 0 on success and 1 for every failure (the peer ends
  each error with a fatal log line), where ``migmanagerd`` tells usage and
  configuration errors (2) from failed operations (1);
* ``apply -c NAME`` changes the GPUs only; the peer has no notion of a
  boot-time selection, while ``migmanagerd apply -c`` also selects NAME;
* ``export`` merges entries as the peer does (``devices: all`` without a
  device-filter on a uniform node), and ``-o json`` prints that config in
  JSON, not ``migmanagerd``'s per-GPU observation.
"""

from __future__ import annotations

import argparse
import json
import sys

from migmanagerd.cli.main import build_parser, parse_args, run
from migmanagerd.errors import EXIT_FAILED, EXIT_OK, UsageError
from migmanagerd.log import get_logger, setup_logging

PROG = "nvidia-mig-parted"
EPILOG = (
    "Exit status: 0 success (assert: applied), 1 any failure, as nvidia-mig-parted. "
    "The same commands with migmanagerd's exit codes (2 for bad input): migmanagerd."
)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv, build_parser(PROG, EPILOG))
    except SystemExit as exc:  # --help and --version (0), argparse's usage errors (2)
        return EXIT_OK if exc.code in (0, None) else EXIT_FAILED
    except UsageError as exc:  # a malformed MIG_PARTED_* boolean
        setup_logging(False)
        get_logger("cli").error("%s", exc)
        return EXIT_FAILED
    if args.command == "apply":
        args.persist_selection = False
    if args.command == "export" and not args.json:
        args.func = export_config
    return EXIT_OK if run(args) == EXIT_OK else EXIT_FAILED


def export_config(args: argparse.Namespace) -> int:
    """``export`` as the peer prints it: its entry shape, and with ``-o json``
    the v1 config in JSON (migmanagerd's ``export --json`` prints the node)."""
    from migmanagerd.apply.configtext import config_json, render_config_file
    from migmanagerd.apply.engine import ApplyEngine
    from migmanagerd.apply.export import node_config
    from migmanagerd.apply.export_peer import peer_shape
    from migmanagerd.gpu.factory import open_backend

    if not args.config_label.strip():
        raise UsageError("--config-label must not be empty")
    engine = ApplyEngine(open_backend(args.backend))
    try:
        state = engine.observe()
    finally:
        engine.backend.close()
    config, warnings = node_config(state, args.config_label)
    log = get_logger("export")
    for w in warnings:
        log.warning("%s", w)
    config = peer_shape(config)
    if args.output_format == "json":
        json.dump(config_json([config]), sys.stdout, indent=2)
        print()
    else:
        print(render_config_file([config]), end="")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
