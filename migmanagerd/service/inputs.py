"""Everything a run reads before it decides anything, loaded and checked once.

Each of the four operator files is read once through the trust walk
(``spec/trust.py``) and parsed from exactly the bytes that were checked; a bad
or untrusted file is a usage error (exit 2) naming file:line:col, before
anything on the node changes. config.yaml must exist; hooks.yaml, clients.yaml
and integrations.yaml may be absent, but only truly absent: a dangling or
looping symlink or an untrusted file is an error, never "no hooks".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from migmanagerd.clients.clientset import ClientsFile, parse_clients
from migmanagerd.integrations.settings import IntegrationSettings, parse_integrations
from migmanagerd.service.options import ServiceOptions
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.selector import validate_config_name
from migmanagerd.spec.config import STDIN_PATH, load_config, parse_config
from migmanagerd.spec.hooks import parse_hooks
from migmanagerd.spec.selection import pick_config, selected_name
from migmanagerd.spec.trust import read_trusted, read_trusted_optional
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
    if config_path == STDIN_PATH:  # `-f -`: nothing on disk to check
        config_file = load_config(config_path)
    else:
        config_file = parse_config(read_trusted(config_path, "config file"), config_path)
    name = selected_name(opts.selected_config, config_file, fallback=lambda: state_selection)
    config = pick_config(config_file, name)
    if opts.persist_selection:
        # `apply -c NAME` ends by writing NAME into the drop-in: a name the
        # drop-in cannot hold is refused now, before anything runs, not after
        # the node was changed
        validate_config_name(name)
    return RunInputs(
        name=name,
        config=config,
        config_file=config_path,
        hooks=load_trusted_hooks(opts.hooks_file, paths.hooks_file),
        clients=load_trusted_clients(paths.clients_file),
        integrations=load_trusted_integrations(paths.integrations_file),
    )


def inputs_for(name: str, config: MigConfig, source: str, opts: ServiceOptions, paths: NodePaths) -> RunInputs:
    """A run's inputs for a config that does not come from config.yaml (a
    checkpoint's, for ``restore``): hooks, clients and integrations as any run."""
    return RunInputs(
        name=name,
        config=config,
        config_file=source,
        hooks=load_trusted_hooks(opts.hooks_file, paths.hooks_file),
        clients=load_trusted_clients(paths.clients_file),
        integrations=load_trusted_integrations(paths.integrations_file),
    )


def load_trusted_hooks(explicit: str | None, default: Path) -> HooksFile:
    """``explicit`` (-k, the drop-in) must exist; the default path may be absent."""
    if explicit is not None:
        return parse_hooks(read_trusted(explicit, "hooks file"), explicit)
    text = read_trusted_optional(default, "hooks file")
    return HooksFile(path="", hooks={}) if text is None else parse_hooks(text, str(default))


def load_trusted_clients(path: Path) -> ClientsFile | None:
    text = read_trusted_optional(path, "clients file")
    return None if text is None else parse_clients(text, str(path))


def load_trusted_integrations(path: Path) -> IntegrationSettings:
    """integrations.yaml names commands run as root (cdi.command,
    slurm.scontrol) and files written as root: trusted like hooks.yaml."""
    text = read_trusted_optional(path, "integrations file")
    return IntegrationSettings() if text is None else parse_integrations(text, str(path))
