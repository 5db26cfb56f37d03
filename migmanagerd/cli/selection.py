"""Which config file and which config in it a command works on.

Precedence (README.md, "Selecting a config and applying it"): ``-c/--selected-config``
> env ``MIG_PARTED_SELECTED_CONFIG`` > a caller-supplied fallback (the service
passes the name recorded in state.json) > the file's only config, as
nvidia-mig-parted does > a usage error. An unknown name is a usage error that
lists the names the file has.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from migmanagerd.cli.common import env_selected_config
from migmanagerd.errors import UsageError
from migmanagerd.spec.types import ConfigFile, MigConfig

Fallback = Callable[[], "str | None"]


def read_config_file(path: str) -> ConfigFile:
    """Load and validate a config file; ``-`` reads standard input (as nvidia-mig-parted)."""
    from migmanagerd.spec.config import load_config, parse_config

    if path == "-":
        return parse_config(sys.stdin.read(), "<stdin>")
    return load_config(path)


def selected_name(flag: str | None, config_file: ConfigFile, *, fallback: Fallback | None = None) -> str:
    for candidate in (flag, env_selected_config(), fallback() if fallback else None):
        if candidate:
            return candidate
    if len(config_file.configs) == 1:
        return next(iter(config_file.configs))
    raise UsageError(
        f"{config_file.path}: no config selected: pass -c NAME or set MIG_PARTED_SELECTED_CONFIG "
        f"(configs: {', '.join(config_file.configs)})"
    )


def pick_config(config_file: ConfigFile, name: str) -> MigConfig:
    config = config_file.configs.get(name)
    if config is None:
        raise UsageError(
            f"{config_file.path}: config '{name}' not found (configs: {', '.join(config_file.configs)})"
        )
    return config


def load_selection(args, *, fallback: Fallback | None = None) -> tuple[ConfigFile, MigConfig]:
    """``args.config_file`` and ``args.selected_config`` -> the file and the chosen config."""
    config_file = read_config_file(args.config_file)
    name = selected_name(getattr(args, "selected_config", None), config_file, fallback=fallback)
    return config_file, pick_config(config_file, name)



def open_engine(args, notify=None):
    """The backend named by ``--backend``/``MIGMANAGERD_BACKEND`` and an engine over it."""
    from migmanagerd.apply.engine import ApplyEngine
    from migmanagerd.gpu.factory import open_backend

    backend = open_backend(getattr(args, "backend", None))
    return ApplyEngine(backend, notify=notify)
