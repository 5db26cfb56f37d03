"""``migmanagerd`` entry point: parse arguments, run one command, map errors to exit codes.

Each subcommand lives in ``migmanagerd/cli/cmd_<name>.py`` and exposes
``register(subparsers)``; its parser sets ``func`` to ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from migmanagerd import __version__
from migmanagerd.cli.common import resolve_env_defaults
from migmanagerd.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, MigManagerError, UsageError
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
    "journal",
    "sim",
    "checkpoint",
    "restore",
    "request",
    "release",
    "suggest",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors exit 2, as the contract says
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


PROG = "migmanagerd"
EPILOG = "Exit codes: 0 success (assert: applied), 1 not applied or failed, 2 usage or configuration error."


def build_parser(prog: str = PROG, epilog: str = EPILOG) -> argparse.ArgumentParser:
    """The whole command line; ``prog``/``epilog`` let the ``nvidia-mig-parted``
    front end (cli/peer.py) present the same commands under its own name."""
    parser = _Parser(
        prog=prog,
        description="Keep the MIG layout of every NVIDIA GPU in this node as selected.",
        epilog=epilog,
    )
    parser.add_argument("-v", "--version", action="version", version=f"{prog} (migmanagerd) {__version__}"
                        if prog != PROG else f"migmanagerd {__version__}")
    # nvidia-mig-parted's global flag, before the command (`-d apply ...`);
    # the same flags after the command work too
    parser.add_argument(
        "-d", "--debug", dest="global_debug", action="store_true",
        help="more log output, for any command (env MIG_PARTED_DEBUG)",
    )
    parser.add_argument(
        "--backend", dest="global_backend", choices=("nvml", "sim"), default=None,
        help="GPU backend, for any command (env MIGMANAGERD_BACKEND; default nvml)",
    )
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


def _help_as_flag(argv: list[str]) -> list[str]:
    """``help`` and ``help COMMAND`` (as nvidia-mig-parted has them) as
    ``--help`` and ``COMMAND --help``; global options before them are kept."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--backend" else 1
    if i < len(argv) and argv[i] == "help":
        return [*argv[:i], *argv[i + 1 : i + 2], "--help"]
    return argv


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The parsed command line, with environment defaults resolved and the
    global flags given before the command merged into the command's own."""
    parser = parser or build_parser()
    args = parser.parse_args(_help_as_flag(list(sys.argv[1:] if argv is None else argv)))
    if args.global_debug:
        args.debug = True
    if args.global_backend is not None:
        args.backend = args.global_backend
    return resolve_env_defaults(args)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:  # a malformed MIG_PARTED_* boolean
        setup_logging(False)
        get_logger("cli").error("%s", exc)
        return exc.exit_code
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; expected failures become their exit code."""
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
