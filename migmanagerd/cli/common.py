"""Options shared by several subcommands, nvidia-mig-parted compatible."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from migmanagerd.default_paths import DEFAULT_CONFIG_FILE, DEFAULT_HOOKS_FILE
from migmanagerd.errors import UsageError

# Go's strconv.ParseBool, which nvidia-mig-parted's flag library applies to
# MIG_PARTED_* booleans; an empty value is false there too.
GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False", "")


def parse_go_bool(text: str, name: str) -> bool:
    if text in GO_TRUE:
        return True
    if text in GO_FALSE:
        return False
    raise UsageError(
        f"environment variable {name}={text!r} is not a boolean "
        "(true: 1, t, T, TRUE, true, True; false: 0, f, F, FALSE, false, False)"
    )


@dataclass(frozen=True)
class EnvBool:
    """The default of a boolean flag: environment variable ``name``, read
    only when the command that has the flag runs and the flag was not given,
    so a bad value is an error of that command alone (as in nvidia-mig-parted).
    ``resolve_env_defaults`` replaces it by the bool after parsing."""

    name: str

    def resolve(self) -> bool:
        return parse_go_bool(os.environ.get(self.name, ""), self.name)


def env_flag(name: str) -> EnvBool:
    """A boolean flag's default from environment variable ``name``."""
    return EnvBool(name)


def resolve_env_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Every ``EnvBool`` default left in ``args`` replaced by its value;
    a malformed variable raises ``UsageError``."""
    for key, value in vars(args).items():
        if isinstance(value, EnvBool):
            setattr(args, key, value.resolve())
    return args


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-d", "--debug", action="store_true", default=env_flag("MIG_PARTED_DEBUG"),
        help="more log output (env MIG_PARTED_DEBUG)",
    )


def add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", choices=("nvml", "sim"), default=os.environ.get("MIGMANAGERD_BACKEND") or "nvml",
        help="GPU backend (env MIGMANAGERD_BACKEND; default nvml)",
    )


def add_config_file(p: argparse.ArgumentParser) -> None:
    # None until cli/persisted_args.py fills it: the file a command uses
    # without -f is the one the boot uses (env, then the unit's drop-in)
    p.add_argument(
        "-f", "--config-file", default=None,
        help="MIG config file, '-' for standard input (env MIG_PARTED_CONFIG_FILE; default: the file the "
        f"unit's drop-in names, else {DEFAULT_CONFIG_FILE})",
    )


def add_hooks_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-k", "--hooks-file", default=os.environ.get("MIG_PARTED_HOOKS_FILE") or None,
        help=f"hooks file (env MIG_PARTED_HOOKS_FILE; the service uses {DEFAULT_HOOKS_FILE} if it exists)",
    )


def add_selected_config(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument(
        "-c", "--selected-config", default=None, required=required,
        help="config name to use (else env MIG_PARTED_SELECTED_CONFIG, else the last applied one)",
    )


def add_mode_only(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "-m", "--mode-only", action="store_true", default=env_flag("MIG_PARTED_MODE_CHANGE_ONLY"),
        help=f"only {what} the MIG mode, not the MIG devices (env MIG_PARTED_MODE_CHANGE_ONLY)",
    )


OUTPUT_FORMATS = ("yaml", "json")


def _output_format(text: str) -> str:
    # also applied to the MIG_PARTED_OUTPUT_FORMAT default, which argparse's
    # choices never check: an unknown format is an error, not silently YAML
    if text not in OUTPUT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not an output format (yaml or json; -o/--output-format or MIG_PARTED_OUTPUT_FORMAT)"
        )
    return text


def add_output_format(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument(
        "-o", "--output-format", choices=OUTPUT_FORMATS, type=_output_format,
        default=os.environ.get("MIG_PARTED_OUTPUT_FORMAT") or "yaml", help=help_text,
    )
