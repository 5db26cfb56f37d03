"""Which config file and which config in it a run works on.

Precedence: ``-c/--selected-config`` > env ``MIG_PARTED_SELECTED_CONFIG`` > a
caller-supplied fallback (the service passes the name recorded in
state.json) > the file's only config, as nvidia-mig-parted does > a usage
error. An unknown name is a usage error that lists the names the file has.
The boot-time service and every CLI command choose through here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from migmanagerd.errors import UsageError
from migmanagerd.spec.config import load_config
from migmanagerd.spec.types import ConfigFile, MigConfig

SELECTED_CONFIG_ENV = "MIG_PARTED_SELECTED_CONFIG"

Fallback = Callable[[], "str | None"]


def env_selected_config(env: Mapping[str, str] | None = None) -> str | None:
    """The name ``MIG_PARTED_SELECTED_CONFIG`` selects (the unit's drop-in sets it)."""
    return (os.environ if env is None else env).get(SELECTED_CONFIG_ENV) or None


def read_config_file(path: str) -> ConfigFile:
    """Load and validate a config file; ``-`` reads standard input (as nvidia-mig-parted)."""
    return load_config(path)


def selected_name(
    flag: str | None,
    config_file: ConfigFile,
    *,
    fallback: Fallback | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    for candidate in (flag, env_selected_config(env), fallback() if fallback else None):
        if candidate:
            return candidate
    if len(config_file.configs) == 1:
        return next(iter(config_file.configs))
    raise UsageError(
        f"{config_file.path}: no config selected: pass -c NAME or set {SELECTED_CONFIG_ENV} "
        f"(configs: {', '.join(config_file.configs)})"
    )


def pick_config(config_file: ConfigFile, name: str) -> MigConfig:
    config = config_file.configs.get(name)
    if config is None:
        raise UsageError(
            f"{config_file.path}: config '{name}' not found (configs: {', '.join(config_file.configs)})"
        )
    return config
