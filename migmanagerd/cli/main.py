"""``migmanagerd`` entry point: parse arguments, run one command, map errors to exit codes.

Each subcommand lives in ``migmanagerd/cli/cmd_<name>.py`` and exposes
``register(subparsers)``; its parser sets ``func`` to ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from migmanagerd import __version__
from migmanagerd.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, MigManagerError
from migmanagerd.log import get_logger, setup_logging

# Order is the order `--help` lists them.
COMMANDS = (
    "apply",
    "assert",
    "plan",
    "export",
    "select",
    "status",
    "validate",
    "generate_config",
    "service",
    "sim",
    "checkpoint",
    "restore",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2, as the contract says
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="migmanagerd",
        description="Keep the MIG layout of every NVIDIA GPU in this node as selected.",
        epilog="Exit codes: 0 success (assert: applied), 1 not applied or failed, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"migmanagerd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"migmanagerd.cli.cmd_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"migmanagerd.cli.cmd_{name}":
                continue  # a command module this installation lacks
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "debug", False))
    log = get_logger("cli")
    try:
        return int(args.func(args) or 0)
    except MigManagerError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except BrokenPipeError:
        # output piped into `head` and closed: not an error of ours
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
