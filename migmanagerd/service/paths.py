"""Where the daemon's files live on a node.

Everything the service reads or writes outside its package is named here, so
tests and the demo can run the whole service on a throwaway root:

* ``MIGMANAGERD_ROOT=/tmp/x`` prefixes every path (``/tmp/x/etc/...``);
* ``MIGMANAGERD_STATE_DIR``, ``MIGMANAGERD_DROPIN`` and
  ``MIGMANAGERD_BOOT_ID_FILE`` replace one path each (taken as given, not
  prefixed by the root).

Under a root, the boot id is read from ``<root>/proc/sys/kernel/random/boot_id``
when that file exists (so a demo can fake a reboot by rewriting it) and from
the kernel's file otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from migmanagerd.default_paths import (
    BOOT_ID_FILE,
    DEFAULT_CLIENTS_FILE,
    DEFAULT_CONFIG_FILE,
    DEFAULT_DROPIN,
    DEFAULT_HOOKS_FILE,
    DEFAULT_INTEGRATIONS_FILE,
    DEFAULT_STATE_DIR,
)

STATE_FILE_NAME = "state.json"

ENV_ROOT = "MIGMANAGERD_ROOT"
ENV_STATE_DIR = "MIGMANAGERD_STATE_DIR"
ENV_DROPIN = "MIGMANAGERD_DROPIN"
ENV_BOOT_ID_FILE = "MIGMANAGERD_BOOT_ID_FILE"


@dataclass(frozen=True)
class NodePaths:
    config_file: Path = Path(DEFAULT_CONFIG_FILE)
    hooks_file: Path = Path(DEFAULT_HOOKS_FILE)
    clients_file: Path = Path(DEFAULT_CLIENTS_FILE)
    integrations_file: Path = Path(DEFAULT_INTEGRATIONS_FILE)
    dropin: Path = Path(DEFAULT_DROPIN)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    boot_id_file: Path = Path(BOOT_ID_FILE)

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE_NAME

    @classmethod
    def under_root(cls, root: str | os.PathLike[str]) -> NodePaths:
        """Every default path moved under ``root`` (boot_id included, so a test
        can fake a reboot by rewriting ``<root>/proc/sys/kernel/random/boot_id``)."""
        r = Path(root)

        def p(path: str) -> Path:
            return r / path.lstrip("/")

        return cls(
            config_file=p(DEFAULT_CONFIG_FILE),
            hooks_file=p(DEFAULT_HOOKS_FILE),
            clients_file=p(DEFAULT_CLIENTS_FILE),
            integrations_file=p(DEFAULT_INTEGRATIONS_FILE),
            dropin=p(DEFAULT_DROPIN),
            state_dir=p(DEFAULT_STATE_DIR),
            boot_id_file=p(BOOT_ID_FILE),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NodePaths:
        env = os.environ if env is None else env
        root = env.get(ENV_ROOT) or ""
        paths = cls.under_root(root) if root else cls()
        changes: dict[str, Path] = {}
        if env.get(ENV_STATE_DIR):
            changes["state_dir"] = Path(env[ENV_STATE_DIR])
        if env.get(ENV_DROPIN):
            changes["dropin"] = Path(env[ENV_DROPIN])
        if env.get(ENV_BOOT_ID_FILE):
            changes["boot_id_file"] = Path(env[ENV_BOOT_ID_FILE])
        return replace(paths, **changes) if changes else paths

    def read_boot_id(self) -> str:
        """The kernel's id for this boot; "" when it cannot be read (never raises:
        an unknown boot id only makes the reboot guard more careful)."""
        for candidate in (self.boot_id_file, Path(BOOT_ID_FILE)):
            try:
                return candidate.read_text(encoding="ascii").strip()
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError):
                return ""
        return ""
