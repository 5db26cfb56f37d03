"""Commands given no ``-c``/``-f``/``-k`` work on what the boot would use.

``assert``, ``plan``, ``status``, ``validate``, ``apply`` and ``service``
fill their missing config file, hooks file and selected name from the
persisted selection (service/persisted.py), so they agree with the unit.
"""

from __future__ import annotations

import argparse

from migmanagerd.service.paths import NodePaths
from migmanagerd.service.persisted import Persisted, persisted_selection
from migmanagerd.service.state import StateStore


def fill_from_persisted(args: argparse.Namespace, paths: NodePaths | None = None) -> Persisted:
    """Set ``args.config_file`` (and ``args.hooks_file`` where the command has
    one) when not given; return the persisted selection, whose ``name`` is
    the fallback for a missing ``-c``."""
    paths = paths or NodePaths.from_env()
    loaded = StateStore(paths).load()
    persisted = persisted_selection(paths, loaded.state.selected_config)
    if getattr(args, "config_file", None) is None:
        args.config_file = persisted.config_file or str(paths.config_file)
    if hasattr(args, "hooks_file") and args.hooks_file is None:
        args.hooks_file = persisted.hooks_file
    return persisted
