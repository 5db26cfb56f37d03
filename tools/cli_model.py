"""A plain description of the ``migmanagerd`` command line, read from its argparse parser.

The man page and the bash completion are both rendered from this model, so they
list exactly the commands and options the installed CLI accepts, including
commands added after this file was written.  argparse keeps subcommands and
actions in attributes without a public accessor (``_actions``,
``_choices_actions``); they have been stable since Python 3.2 and reading them
here keeps every other module free of that detail.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

# Environment variables that change option defaults when the parser is built;
# cleared while reading it so generated documents show the shipped defaults.
ENV_PREFIXES = ("MIG_PARTED_", "MIGMANAGERD_")

ENV_NAME = re.compile(r"\b(?:MIG_PARTED|MIGMANAGERD)_[A-Z0-9_]+\b")


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]          # ("-f", "--config-file"); empty for positionals
    dest: str
    metavar: str | None             # None when the option takes no value
    help: str
    choices: tuple[str, ...] = ()
    required: bool = False
    repeatable: bool = False        # nargs "*"/"+" or append

    @property
    def takes_value(self) -> bool:
        return self.metavar is not None

    @property
    def positional(self) -> bool:
        return not self.flags


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]           # () for the program itself, ("sim", "create") for nested
    help: str
    description: str
    epilog: str
    options: tuple[Option, ...]     # optionals first, then positionals, in parser order
    subcommands: tuple[Command, ...]
    aliases: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""

    def walk(self) -> Iterator[Command]:
        """This command, then every subcommand, depth first."""
        yield self
        for sub in self.subcommands:
            yield from sub.walk()

    def env_names(self) -> set[str]:
        """Environment variable names mentioned in this command's texts."""
        texts = [self.help, self.description, self.epilog] + [o.help for o in self.options]
        return {m for t in texts for m in ENV_NAME.findall(t)}


def _expand_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if action.help in (None, argparse.SUPPRESS):
        return ""
    formatter = parser._get_formatter()  # noqa: SLF001 - the only way to expand %(default)s
    return " ".join(formatter._expand_help(action).split())  # noqa: SLF001


def _metavar(action: argparse.Action) -> str | None:
    if action.nargs == 0:
        return None
    if action.metavar is not None:
        mv = action.metavar
        return " ".join(mv) if isinstance(mv, tuple) else str(mv)
    if action.choices is not None and not action.option_strings:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _option(parser: argparse.ArgumentParser, action: argparse.Action) -> Option:
    return Option(
        flags=tuple(action.option_strings),
        dest=action.dest,
        metavar=_metavar(action),
        help=_expand_help(parser, action),
        choices=tuple(str(c) for c in action.choices) if action.choices is not None else (),
        required=bool(action.required),
        repeatable=action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction),  # noqa: SLF001
    )


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def read_command(
    parser: argparse.ArgumentParser,
    path: tuple[str, ...] = (),
    help: str = "",
    aliases: tuple[str, ...] = (),
) -> Command:
    options: list[Option] = []
    positionals: list[Option] = []
    subcommands: list[Command] = []
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            by_parser: dict[int, list[str]] = {}
            for name, sub in action.choices.items():
                by_parser.setdefault(id(sub), []).append(name)
            helps = {ca.dest: _clean(ca.help) for ca in action._choices_actions}  # noqa: SLF001
            for names in by_parser.values():
                primary, *more = names
                sub = action.choices[primary]
                subcommands.append(read_command(sub, path + (primary,), helps.get(primary, ""), tuple(more)))
            continue
        if action.help == argparse.SUPPRESS:
            continue
        (options if action.option_strings else positionals).append(_option(parser, action))
    return Command(
        path=path,
        help=help,
        description=_clean(parser.description),
        epilog=_clean(parser.epilog),
        options=tuple(options + positionals),
        subcommands=tuple(subcommands),
        aliases=aliases,
    )


def read_cli() -> Command:
    """The model of ``migmanagerd.cli.main.build_parser()`` with shipped defaults."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    for key in saved:
        del os.environ[key]
    try:
        from migmanagerd.cli.main import build_parser

        return read_command(build_parser())
    finally:
        os.environ.update(saved)
