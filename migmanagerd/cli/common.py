"""Options shared by several subcommands, nvidia-mig-parted compatible."""

from __future__ import annotations

import argparse
import os

from migmanagerd.default_paths import DEFAULT_CONFIG_FILE, DEFAULT_HOOKS_FILE


def env_flag(name: str) -> bool:
    """A boolean environment variable as nvidia-mig-parted reads them."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


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


def default_config_file() -> str:
    """env MIG_PARTED_CONFIG_FILE, else the node's path (under MIGMANAGERD_ROOT when set)."""
    from migmanagerd.service.paths import NodePaths

    return os.environ.get("MIG_PARTED_CONFIG_FILE") or str(NodePaths.from_env().config_file)


def add_config_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f", "--config-file", default=default_config_file(),
        help=f"MIG config file (env MIG_PARTED_CONFIG_FILE; default {DEFAULT_CONFIG_FILE})",
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
