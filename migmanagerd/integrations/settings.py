"""``/etc/nvidia-mig-manager/integrations.yaml``: what to do beyond the node.

Everything is off unless the operator turns it on; a missing file (or one
holding only comments, as a shipped example would) means all off. The file is
validated like config.yaml: unknown keys and wrong types are errors naming
file:line:column, raised before anything on the node is touched.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from migmanagerd.default_paths import DEFAULT_INTEGRATIONS_FILE, DEFAULT_METRICS_FILE
from migmanagerd.errors import SourceLocation, SpecError
from migmanagerd.spec.limits import require_timeout
from migmanagerd.spec.source import (
    YNode,
    check_keys,
    load_yaml_text,
    require_bool,
    require_seq,
    require_str,
)

DEFAULT_PATH = Path(DEFAULT_INTEGRATIONS_FILE)

# Where Slurm's files conventionally live; the operator points these elsewhere
# when gres.conf holds more than the GPUs (see docs/integrations.md).
DEFAULT_GRES_FILE = "/etc/slurm/gres.conf"
DEFAULT_NODENAME_FILE = "/etc/slurm/migmanagerd-gres.fragment"
DEFAULT_METRICS_PATH = DEFAULT_METRICS_FILE

# "cap": File=<the compute instance's nvidia-cap device>, one file per MIG device.
# "parent-and-caps": MultipleFiles=<parent GPU>,<GI cap>,<CI cap>, the set a job's
# device cgroup must allow for CUDA to open the MIG device (ConstrainDevices=yes).
MIG_FILE_MODES = ("cap", "parent-and-caps")

_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.service$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class DrainSettings:
    enabled: bool = False
    reason: str = "migmanagerd: MIG reconfiguration"
    timeout_s: int = 3600
    poll_s: int = 10


@dataclass(frozen=True)
class SlurmSettings:
    enabled: bool = False
    gres_file: str = DEFAULT_GRES_FILE
    nodename_file: str = DEFAULT_NODENAME_FILE
    node_name: str = ""  # resolved to the short hostname by load_integrations
    mig_files: str = "cap"
    drain: DrainSettings = field(default_factory=DrainSettings)
    restart_slurmd: bool = True
    slurmd_unit: str = "slurmd.service"
    scontrol: str = "scontrol"
    command_timeout_s: int = 30
    root: str = "/"


@dataclass(frozen=True)
class CdiSettings:
    enabled: bool = False
    unit: str | None = "nvidia-cdi-refresh.service"
    command: tuple[str, ...] = ()
    timeout_s: int = 120


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = False
    path: str = DEFAULT_METRICS_PATH


@dataclass(frozen=True)
class IntegrationSettings:
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    cdi: CdiSettings = field(default_factory=CdiSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    @property
    def any_enabled(self) -> bool:
        return self.slurm.enabled or self.cdi.enabled or self.metrics.enabled


def short_hostname() -> str:
    return socket.gethostname().split(".", 1)[0]


def load_integrations(path: str | Path = DEFAULT_PATH, *, hostname: str | None = None) -> IntegrationSettings:
    """Read the settings file; a missing file means every integration is off."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return IntegrationSettings()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError(f"cannot read file: {reason}", SourceLocation(name, 0, 0)) from None
    return parse_integrations(text, name, hostname=hostname)


def parse_integrations(text: str, filename: str, *, hostname: str | None = None) -> IntegrationSettings:
    if not _has_content(text):
        return IntegrationSettings()
    root = load_yaml_text(text, filename)
    items = check_keys(root, ("version", "slurm", "cdi", "metrics"), ("version",), context="integrations")
    version = require_str(items["version"], context="integrations", field="version")
    if version != "v1":
        raise SpecError(f"unsupported version '{version}' (supported: v1)", items["version"].loc,
                        context="integrations", field="version")
    slurm = _slurm(items["slurm"]) if "slurm" in items else SlurmSettings()
    if not slurm.node_name:
        slurm = replace(slurm, node_name=hostname or short_hostname())
    cdi = _cdi(items["cdi"]) if "cdi" in items else CdiSettings()
    metrics = _metrics(items["metrics"]) if "metrics" in items else MetricsSettings()
    return IntegrationSettings(slurm=slurm, cdi=cdi, metrics=metrics)


def _has_content(text: str) -> bool:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped not in ("---", "..."):
            return True
    return False


def _abs_path(node: YNode, context: str, field_name: str) -> str:
    value = require_str(node, context=context, field=field_name)
    if not value.startswith("/"):
        raise SpecError(f"must be an absolute path, got '{value}'", node.loc, context=context, field=field_name)
    return value


def _unit(node: YNode, context: str, field_name: str) -> str:
    value = require_str(node, context=context, field=field_name)
    if not _UNIT.match(value):
        raise SpecError(f"'{value}' is not a systemd service unit name (e.g. slurmd.service)",
                        node.loc, context=context, field=field_name)
    return value


def _nonempty(node: YNode, context: str, field_name: str) -> str:
    value = require_str(node, context=context, field=field_name)
    if not value.strip():
        raise SpecError("must not be empty", node.loc, context=context, field=field_name)
    return value


def _node_name(node: YNode, ctx: str, field_name: str) -> str:
    value = require_str(node, context=ctx, field=field_name)
    if not _NODE_NAME.match(value):
        raise SpecError(f"'{value}' is not a Slurm node name (letters, digits, '.', '_', '-')",
                        node.loc, context=ctx, field=field_name)
    return value


def _mig_files(node: YNode, ctx: str, field_name: str) -> str:
    value = require_str(node, context=ctx, field=field_name)
    if value not in MIG_FILE_MODES:
        raise SpecError(f"must be one of {', '.join(MIG_FILE_MODES)}, got '{value}'",
                        node.loc, context=ctx, field=field_name)
    return value


# slurm's keys, in the order error messages list them, each with its parser
# (node, context, "slurm.<key>") -> value
_SLURM_FIELDS: dict[str, Callable[[YNode, str, str], Any]] = {
    "enabled": lambda n, ctx, f: require_bool(n, context=ctx, field=f),
    "gres_file": _abs_path,
    "nodename_file": _abs_path,
    "node_name": _node_name,
    "mig_files": _mig_files,
    "drain": lambda n, ctx, f: _drain(n),
    "restart_slurmd": lambda n, ctx, f: require_bool(n, context=ctx, field=f),
    "slurmd_unit": _unit,
    "scontrol": _nonempty,
    "command_timeout_s": lambda n, ctx, f: require_timeout(n, context=ctx, field=f),
    "root": _abs_path,
}


def _slurm(node: YNode) -> SlurmSettings:
    ctx = "integrations"
    items = check_keys(node, tuple(_SLURM_FIELDS), context=ctx, field="slurm")
    kw = {key: _SLURM_FIELDS[key](items[key], ctx, f"slurm.{key}") for key in _SLURM_FIELDS if key in items}
    result = replace(SlurmSettings(), **kw)
    if result.gres_file == result.nodename_file:
        where = items.get("nodename_file") or items.get("gres_file") or node
        raise SpecError("gres_file and nodename_file must be different files", where.loc,
                        context=ctx, field="slurm.nodename_file")
    return result


def _drain(node: YNode) -> DrainSettings:
    ctx = "integrations"
    items = check_keys(node, ("enabled", "reason", "timeout_s", "poll_s"), context=ctx, field="slurm.drain")
    kw: dict[str, Any] = {}
    if "enabled" in items:
        kw["enabled"] = require_bool(items["enabled"], context=ctx, field="slurm.drain.enabled")
    if "reason" in items:
        kw["reason"] = _nonempty(items["reason"], ctx, "slurm.drain.reason")
    if "timeout_s" in items:
        kw["timeout_s"] = require_timeout(items["timeout_s"], minimum=0, context=ctx, field="slurm.drain.timeout_s")
    if "poll_s" in items:
        kw["poll_s"] = require_timeout(items["poll_s"], context=ctx, field="slurm.drain.poll_s")
    return DrainSettings(**kw)


def _cdi(node: YNode) -> CdiSettings:
    ctx = "integrations"
    items = check_keys(node, ("enabled", "unit", "command", "timeout_s"), context=ctx, field="cdi")
    kw: dict[str, Any] = {}
    if "enabled" in items:
        kw["enabled"] = require_bool(items["enabled"], context=ctx, field="cdi.enabled")
    if "unit" in items:
        # null turns the unit path off, leaving only the command
        kw["unit"] = None if items["unit"].value is None else _unit(items["unit"], ctx, "cdi.unit")
    if "command" in items:
        seq = require_seq(items["command"], context=ctx, field="cdi.command")
        if not seq:
            raise SpecError("must name a program and its arguments", items["command"].loc,
                            context=ctx, field="cdi.command")
        argv = tuple(_nonempty(arg, ctx, f"cdi.command[{i}]") for i, arg in enumerate(seq))
        kw["command"] = argv
    if "timeout_s" in items:
        kw["timeout_s"] = require_timeout(items["timeout_s"], context=ctx, field="cdi.timeout_s")
    return CdiSettings(**kw)


def _metrics(node: YNode) -> MetricsSettings:
    ctx = "integrations"
    items = check_keys(node, ("enabled", "path"), context=ctx, field="metrics")
    kw: dict[str, Any] = {}
    if "enabled" in items:
        kw["enabled"] = require_bool(items["enabled"], context=ctx, field="metrics.enabled")
    if "path" in items:
        path = _abs_path(items["path"], ctx, "metrics.path")
        if not path.endswith(".prom"):
            # node_exporter's textfile collector reads only *.prom files
            raise SpecError(f"must end in .prom (node_exporter's textfile collector reads only those), got '{path}'",
                            items["path"].loc, context=ctx, field="metrics.path")
        kw["path"] = path
    return MetricsSettings(**kw)
