"""The selection the next boot applies, for commands given no ``-c``/``-f``/``-k``.

The unit gets its selection from the drop-in as environment variables; a
command run by hand must read the same thing, or ``apply`` and ``assert``
would work on another file's config of the same name than the boot. Order,
per value: the environment (``MIG_PARTED_*``, as the unit sees it) > the
drop-in > for the name, the config state.json last recorded; the caller's
own ``-c``/``-f``/``-k`` come before all of these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from migmanagerd.errors import MigManagerError
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.selector import VAR_CONFIG_FILE, VAR_HOOKS_FILE, VAR_SELECTED, read_selector


@dataclass(frozen=True)
class Persisted:
    name: str | None
    source: str | None  # where the name comes from, for `status`
    config_file: str | None  # None: the default path
    hooks_file: str | None  # None: the default path, if it exists
    problem: str | None = None  # the drop-in could not be read, or systemd reads it differently
    # False when the command works on another config file (-f): then ``name``
    # belongs to a different file and is no fallback for a missing -c
    applies: bool = True

    @property
    def fallback(self) -> str | None:
        """The name to use when no -c is given, or None."""
        return self.name if self.applies else None


def persisted_selection(
    paths: NodePaths, state_selection: str | None = None, env: Mapping[str, str] | None = None
) -> Persisted:
    env = os.environ if env is None else env
    problem = None
    try:
        dropin = read_selector(paths.dropin)
        dropin_env = {k: v for k, v in dropin.environment.items() if k in (VAR_SELECTED, VAR_CONFIG_FILE, VAR_HOOKS_FILE)}
        problem = dropin.problem
    except MigManagerError as exc:
        dropin_env, problem = {}, str(exc)
    name, source = None, None
    if env.get(VAR_SELECTED):
        name, source = env[VAR_SELECTED], f"environment ({VAR_SELECTED})"
    elif dropin_env.get(VAR_SELECTED):
        name, source = dropin_env[VAR_SELECTED], f"drop-in {paths.dropin}"
    elif state_selection:
        name, source = state_selection, "state.json (last applied)"
    return Persisted(
        name=name,
        source=source,
        config_file=env.get(VAR_CONFIG_FILE) or dropin_env.get(VAR_CONFIG_FILE) or None,
        hooks_file=env.get(VAR_HOOKS_FILE) or dropin_env.get(VAR_HOOKS_FILE) or None,
        problem=problem,
    )
