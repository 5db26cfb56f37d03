"""``request --persist NAME``: make the dynamic layout the boot-time truth.

Without it, the selected config stays what every boot restores, and a
dynamic layout lives until the next boot or apply. With it, the node's
layout is written as config NAME (``export``'s v1 form) to ``ondemand.yaml``
next to config.yaml, atomically, and the unit's drop-in selects NAME from
that file (``MIG_PARTED_CONFIG_FILE``). ``migmanagerd select OTHER`` goes
back to config.yaml. config.yaml, the operator's conffile, is never edited.
"""

from __future__ import annotations

from pathlib import Path

from migmanagerd.apply.configtext import render_config_file
from migmanagerd.apply.export import node_config
from migmanagerd.apply.observe import NodeState
from migmanagerd.atomic_file import write_atomic
from migmanagerd.log import get_logger
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.selector import write_selector
from migmanagerd.spec.config import load_config

log = get_logger("ondemand")

PERSIST_FILE_NAME = "ondemand.yaml"


def persist_path(paths: NodePaths) -> Path:
    return paths.config_file.with_name(PERSIST_FILE_NAME)


def persist_layout(state: NodeState, name: str, paths: NodePaths) -> Path:
    config, warnings = node_config(state, name)
    for w in warnings:
        log.warning("%s", w)
    text = render_config_file([config], header="Written by 'migmanagerd request --persist'; the layout served on demand.")
    path = persist_path(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode(), 0o644)
    load_config(path)  # what we wrote must read back
    write_selector(paths.dropin, name, str(path))
    log.info("config '%s' written to %s and selected for boot (systemctl daemon-reload to apply now)", name, path)
    return path
