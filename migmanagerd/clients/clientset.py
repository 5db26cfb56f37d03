"""clients.yaml: which systemd units hold the GPUs and must stop for a change.

``/etc/nvidia-mig-manager/clients.yaml`` (a conffile), ``version: v1``::

    version: v1
    discover: refuse        # refuse | stop  (GPU processes of unlisted units)
    stop-timeout: 90        # seconds per unit stop job (optional)
    start-timeout: 90       # seconds per unit start job (optional)
    groups:
      - name: driver
        stop-before: [mode, config]
        units: [nvsm.service, nvidia-dcgm.service]

Validated as strictly as config.yaml: unknown keys, wrong types, bad or
duplicate unit names are ``SpecError``s pinned to file:line:col. The format is
described for operators in docs/clients.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from migmanagerd.default_paths import DEFAULT_CLIENTS_FILE
from migmanagerd.errors import SourceLocation, SpecError
from migmanagerd.spec.config import check_version
from migmanagerd.spec.limits import require_timeout
from migmanagerd.spec.source import (
    YNode,
    check_keys,
    load_yaml_file,
    load_yaml_text,
    require_seq,
    require_str,
)

DEFAULT_CLIENTS_PATH = DEFAULT_CLIENTS_FILE

CHANGES = ("mode", "config")  # a MIG mode switch (GPU reset), a geometry change
DISCOVER_MODES = ("refuse", "stop")
DEFAULT_TIMEOUT_S = 90

# Units a client list may name: ones that can be stopped and started as jobs.
# Scopes and slices are not started by systemd; devices and mounts are not GPU
# clients.
UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".path")
# systemd.unit(5): names are at most 255 bytes of ASCII letters, digits, ":",
# "-", "_", ".", "\" and "@" (the instance separator).
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]+)?")
_MAX_UNIT_NAME = 255

TOP_KEYS = ("version", "discover", "stop-timeout", "start-timeout", "groups")
GROUP_KEYS = ("name", "stop-before", "units")


@dataclass(frozen=True)
class ClientGroup:
    name: str
    stop_before: tuple[str, ...]  # subset of CHANGES, file order
    units: tuple[str, ...]  # file order
    loc: SourceLocation


@dataclass(frozen=True)
class ClientsFile:
    path: str
    discover: str  # "refuse" or "stop"
    groups: tuple[ClientGroup, ...]
    stop_timeout_s: int = DEFAULT_TIMEOUT_S
    start_timeout_s: int = DEFAULT_TIMEOUT_S

    def units_for(self, change: str) -> tuple[str, ...]:
        """Units to stop before ``change`` ("mode" or "config"), in start order
        (groups in file order, units as listed); stop them in reverse."""
        if change not in CHANGES:
            raise ValueError(f"unknown change {change!r} (expected one of {', '.join(CHANGES)})")
        return tuple(u for g in self.groups if change in g.stop_before for u in g.units)

    @property
    def units(self) -> tuple[str, ...]:
        """Every listed unit, whatever change it stops for."""
        return tuple(u for g in self.groups for u in g.units)


def empty_clients(path: str = DEFAULT_CLIENTS_PATH) -> ClientsFile:
    """What a node without clients.yaml gets: nothing listed, busy GPUs refused."""
    return ClientsFile(path=path, discover="refuse", groups=())


def load_clients(path: str | Path, *, missing_ok: bool = False) -> ClientsFile:
    """Read and validate a clients file; problems raise ``SpecError``.

    With ``missing_ok`` a file that does not exist reads as ``empty_clients``.
    """
    if missing_ok and not Path(path).exists():
        return empty_clients(str(path))
    return _build(load_yaml_file(path), str(path))


def parse_clients(text: str, filename: str) -> ClientsFile:
    """Validate clients text; ``filename`` is only used in messages."""
    return _build(load_yaml_text(text, filename), filename)


def _build(root: YNode, filename: str) -> ClientsFile:
    check_version(root, what="clients file")
    items = check_keys(root, TOP_KEYS, required=("version",))
    discover = "refuse"
    if "discover" in items:
        discover = _choice(items["discover"], DISCOVER_MODES, field="discover")
    stop_timeout = _timeout(items, "stop-timeout")
    start_timeout = _timeout(items, "start-timeout")
    groups: list[ClientGroup] = []
    if "groups" in items:
        seen_groups: dict[str, SourceLocation] = {}
        seen_units: dict[str, tuple[str, SourceLocation]] = {}
        for i, node in enumerate(require_seq(items["groups"], field="groups")):
            group = _group(node, i, seen_units)
            if group.name in seen_groups:
                first = seen_groups[group.name]
                raise SpecError(
                    f"duplicate group name '{group.name}' (first defined at line {first.line})",
                    group.loc,
                    context=f"group '{group.name}'",
                    field="name",
                )
            seen_groups[group.name] = group.loc
            groups.append(group)
    return ClientsFile(
        path=filename,
        discover=discover,
        groups=tuple(groups),
        stop_timeout_s=stop_timeout,
        start_timeout_s=start_timeout,
    )


def _timeout(items: dict[str, YNode], key: str) -> int:
    if key not in items:
        return DEFAULT_TIMEOUT_S
    return require_timeout(items[key], field=key)


def _choice(node: YNode, allowed: tuple[str, ...], *, field: str, context: str | None = None) -> str:
    value = require_str(node, context=context, field=field)
    if value not in allowed:
        raise SpecError(
            f"'{value}' is not one of: {', '.join(allowed)}", node.loc, context=context, field=field
        )
    return value


def _group(node: YNode, index: int, seen_units: dict[str, tuple[str, SourceLocation]]) -> ClientGroup:
    context = f"groups[{index}]"
    items = check_keys(node, GROUP_KEYS, required=("name", "units"), context=context)
    name = require_str(items["name"], context=context, field="name").strip()
    if not name:
        raise SpecError("group name must not be empty", items["name"].loc, context=context, field="name")
    context = f"group '{name}'"

    stop_before: tuple[str, ...] = CHANGES
    if "stop-before" in items:
        change_nodes = require_seq(items["stop-before"], context=context, field="stop-before")
        if not change_nodes:
            raise SpecError(
                f"must name at least one of: {', '.join(CHANGES)}",
                items["stop-before"].loc,
                context=context,
                field="stop-before",
            )
        changes: list[str] = []
        for j, change_node in enumerate(change_nodes):
            change = _choice(change_node, CHANGES, context=context, field=f"stop-before[{j}]")
            if change in changes:
                raise SpecError(f"'{change}' listed twice", change_node.loc, context=context, field=f"stop-before[{j}]")
            changes.append(change)
        stop_before = tuple(changes)

    units: list[str] = []
    for j, unit_node in enumerate(require_seq(items["units"], context=context, field="units")):
        field = f"units[{j}]"
        unit = require_str(unit_node, context=context, field=field)
        problem = unit_name_problem(unit)
        if problem:
            raise SpecError(problem, unit_node.loc, context=context, field=field)
        if unit in seen_units:
            other, loc = seen_units[unit]
            raise SpecError(
                f"unit {unit} is already listed in group '{other}' (line {loc.line}); list each unit once",
                unit_node.loc,
                context=context,
                field=field,
            )
        seen_units[unit] = (name, unit_node.loc)
        units.append(unit)
    return ClientGroup(name=name, stop_before=stop_before, units=tuple(units), loc=node.loc)


def unit_name_problem(unit: str) -> str | None:
    """Why ``unit`` is not a unit name a client list can hold, or None."""
    if not unit:
        return "unit name must not be empty"
    if len(unit) > _MAX_UNIT_NAME:
        return f"unit name is longer than {_MAX_UNIT_NAME} characters"
    suffix = next((s for s in UNIT_SUFFIXES if unit.endswith(s)), None)
    if suffix is None:
        return f"'{unit}' is not a unit name: it must end with one of {', '.join(UNIT_SUFFIXES)}"
    stem = unit[: -len(suffix)]
    if stem.endswith("@"):
        return f"'{unit}' is a template; name an instance, e.g. '{stem}0{suffix}'"
    if not stem or not _UNIT_NAME.fullmatch(stem):
        return f"'{unit}' is not a valid unit name (letters, digits and :-_.\\@ only)"
    return None
