"""Commands given no ``-c``/``-f``/``-k`` work on what the boot would use.

``assert``, ``plan``, ``status``, ``validate``, ``apply`` and ``service``
fill their missing config file, hooks file and selected name from the
persisted selection (service/persisted.py), so they agree with the unit.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from migmanagerd.service.paths import NodePaths
from migmanagerd.service.persisted import Persisted, persisted_selection
from migmanagerd.service.state import StateStore
from migmanagerd.spec.config import STDIN_PATH


def fill_from_persisted(args: argparse.Namespace, paths: NodePaths | None = None) -> Persisted:
    """Set ``args.config_file`` (and ``args.hooks_file`` where the command has
    one) when not given; return the persisted selection, whose ``fallback``
    is the name to use for a missing ``-c`` (none when ``-f`` names another
    file than the persisted one, standard input included)."""
    paths = paths or NodePaths.from_env()
    loaded = StateStore(paths).load()
    persisted = persisted_selection(paths, loaded.state.selected_config)
    persisted_file = persisted.config_file or str(paths.config_file)
    if getattr(args, "config_file", None) is None:
        args.config_file = persisted_file
    elif args.config_file == STDIN_PATH or Path(args.config_file) != Path(persisted_file):
        persisted = replace(persisted, applies=False)
    if hasattr(args, "hooks_file") and args.hooks_file is None:
        args.hooks_file = persisted.hooks_file
    return persisted
