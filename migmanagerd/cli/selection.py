"""The CLI's side of choosing a config: from parsed arguments to the file,
the config and an engine. The choosing itself is ``spec/selection.py``."""

from __future__ import annotations

import argparse

from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.apply.progress import Notifier
from migmanagerd.gpu.factory import open_backend
from migmanagerd.spec.selection import Fallback, pick_config, read_config_file, selected_name
from migmanagerd.spec.types import ConfigFile, MigConfig

# the commands import these names from here too
__all__ = ["Fallback", "load_selection", "open_engine", "pick_config", "read_config_file", "selected_name"]


def load_selection(args: argparse.Namespace, *, fallback: Fallback | None = None) -> tuple[ConfigFile, MigConfig]:
    """``args.config_file`` and ``args.selected_config`` -> the file and the chosen config."""
    config_file = read_config_file(args.config_file)
    name = selected_name(getattr(args, "selected_config", None), config_file, fallback=fallback)
    return config_file, pick_config(config_file, name)


def open_engine(args: argparse.Namespace, notify: Notifier | None = None) -> ApplyEngine:
    """The backend named by ``--backend``/``MIGMANAGERD_BACKEND`` and an engine over it."""
    return ApplyEngine(open_backend(getattr(args, "backend", None)), notify=notify)
