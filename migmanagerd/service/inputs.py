"""Everything a run reads before it decides anything, loaded and checked once.

Each file is trust-checked before it is parsed (``spec/trust.py``); a bad
file is a usage error (exit 2) naming file:line:col, before anything on the
node changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from migmanagerd.clients.clientset import ClientsFile, load_clients
from migmanagerd.integrations.settings import IntegrationSettings, load_integrations
from migmanagerd.service.options import ServiceOptions
from migmanagerd.service.paths import NodePaths
from migmanagerd.spec.config import STDIN_PATH, load_config
from migmanagerd.spec.hooks import load_hooks
from migmanagerd.spec.selection import pick_config, selected_name
from migmanagerd.spec.trust import check_trusted
from migmanagerd.spec.types import HooksFile, MigConfig


@dataclass(frozen=True)
class RunInputs:
    name: str  # the selected config's name
    config: MigConfig
    config_file: str  # where it came from (for the hooks' environment)
    hooks: HooksFile  # empty when there is no hooks file
    clients: ClientsFile | None  # None: no clients.yaml on this node
    integrations: IntegrationSettings

    def listed_units(self, change: str) -> tuple[str, ...]:
        """The clients.yaml units to stop before a ``mode`` or ``config`` change."""
        return self.clients.units_for(change) if self.clients else ()

    @property
    def discover(self) -> str:
        """What to do with GPU holders clients.yaml does not list."""
        return self.clients.discover if self.clients else "refuse"


def load_inputs(opts: ServiceOptions, paths: NodePaths, state_selection: str | None) -> RunInputs:
    """Selection precedence: -c > MIG_PARTED_SELECTED_CONFIG > ``state_selection``
    (the config state.json says was applied last) > the file's only config."""
    config_path = opts.config_file or str(paths.config_file)
    if config_path != STDIN_PATH:  # `-f -`: nothing on disk to check
        check_trusted(config_path, "config file")
    config_file = load_config(config_path)
    name = selected_name(opts.selected_config, config_file, fallback=lambda: state_selection)
    return RunInputs(
        name=name,
        config=pick_config(config_file, name),
        config_file=config_path,
        hooks=_load_hooks(opts, paths),
        clients=_load_clients(paths),
        integrations=load_integrations(paths.integrations_file),
    )


def inputs_for(name: str, config: MigConfig, source: str, opts: ServiceOptions, paths: NodePaths) -> RunInputs:
    """A run's inputs for a config that does not come from config.yaml (a
    checkpoint's, for ``restore``): hooks, clients and integrations as any run."""
    return RunInputs(
        name=name,
        config=config,
        config_file=source,
        hooks=_load_hooks(opts, paths),
        clients=_load_clients(paths),
        integrations=load_integrations(paths.integrations_file),
    )


def _load_hooks(opts: ServiceOptions, paths: NodePaths) -> HooksFile:
    path = opts.hooks_file
    if path is None and paths.hooks_file.exists():
        path = str(paths.hooks_file)
    if path is None:
        return HooksFile(path="", hooks={})
    check_trusted(path, "hooks file")
    return load_hooks(path)


def _load_clients(paths: NodePaths) -> ClientsFile | None:
    path = paths.clients_file
    if not path.exists():
        return None
    check_trusted(str(path), "clients file")
    return load_clients(str(path))
