"""The four operator files a run reads as root, each read once through the
trust walk (spec/trust.py) and parsed from exactly the bytes that were checked.

config.yaml must exist. hooks.yaml, clients.yaml and integrations.yaml may be
absent, but only truly absent: a dangling or looping symlink, a directory in
their place or an untrusted file is an error (exit 2), never "no hooks".
"""

from __future__ import annotations

from pathlib import Path

from migmanagerd.clients.clientset import ClientsFile, parse_clients
from migmanagerd.integrations.settings import IntegrationSettings, parse_integrations
from migmanagerd.spec.config import parse_config
from migmanagerd.spec.hooks import parse_hooks
from migmanagerd.spec.trust import read_trusted, read_trusted_optional
from migmanagerd.spec.types import ConfigFile, HooksFile


def load_trusted_config(path: str | Path) -> ConfigFile:
    return parse_config(read_trusted(path, "config file"), str(path))


def load_trusted_hooks(explicit: str | None, default: Path) -> HooksFile:
    """``explicit`` (-k, the drop-in) must exist; the default path may be absent."""
    if explicit is not None:
        return parse_hooks(read_trusted(explicit, "hooks file"), explicit)
    text = read_trusted_optional(default, "hooks file")
    if text is None:
        return HooksFile(path="", hooks={})
    return parse_hooks(text, str(default))


def load_trusted_clients(path: Path) -> ClientsFile | None:
    text = read_trusted_optional(path, "clients file")
    return None if text is None else parse_clients(text, str(path))


def load_trusted_integrations(path: Path) -> IntegrationSettings:
    """integrations.yaml names commands run as root (cdi.command,
    slurm.scontrol) and files written as root: trusted like hooks.yaml."""
    text = read_trusted_optional(path, "integrations file")
    return IntegrationSettings() if text is None else parse_integrations(text, str(path))
