"""Where the daemon's files live on a node by default: the one list of them.

``service/paths.NodePaths`` moves them under ``MIGMANAGERD_ROOT`` (tests, the
demo); the CLI's help texts, the selector, the clients and integrations
loaders name them from here.
"""

from __future__ import annotations

ETC_DIR = "/etc/nvidia-mig-manager"
DEFAULT_CONFIG_FILE = f"{ETC_DIR}/config.yaml"
DEFAULT_HOOKS_FILE = f"{ETC_DIR}/hooks.yaml"
DEFAULT_CLIENTS_FILE = f"{ETC_DIR}/clients.yaml"
DEFAULT_INTEGRATIONS_FILE = f"{ETC_DIR}/integrations.yaml"
DEFAULT_DROPIN = "/etc/systemd/system/nvidia-mig-manager.service.d/override.conf"
DEFAULT_STATE_DIR = "/var/lib/nvidia-mig-manager"
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
# node_exporter's textfile collector directory as Debian's package sets it up
DEFAULT_METRICS_FILE = "/var/lib/prometheus/node-exporter/migmanagerd.prom"
