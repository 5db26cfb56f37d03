"""config.yaml (nvidia-mig-parted ``version: v1``) -> ``ConfigFile``.

The format is nvidia-mig-parted's, so NVIDIA's shipped files keep working;
validation is stricter than nvidia-mig-parted's (unknown keys, wrong types and
contradictions are rejected) because a typo here would otherwise surface as a
wrong GPU layout at boot. Every error is one ``SpecError`` line pinned to the
offending key or value: ``file:line:col: config 'NAME' entry N: field 'x': what``.
See docs/config-format.md.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal, TextIO

from migmanagerd.errors import SourceLocation, SpecError
from migmanagerd.spec.profile import MigProfile, ProfileNameError
from migmanagerd.spec.source import (
    YNode,
    check_keys,
    load_yaml_file,
    load_yaml_text,
    require_bool,
    require_int,
    require_map,
    require_seq,
    require_str,
)
from migmanagerd.spec.types import ConfigEntry, ConfigFile, DeviceFilter, MigConfig

SUPPORTED_VERSION = "v1"
TOP_KEYS = ("version", "mig-configs")
ENTRY_KEYS = ("devices", "device-filter", "mig-enabled", "mig-devices")

# 0xDDDDVVVV: PCI device id then vendor id, as nvidia-mig-parted and
# `nvidia-smi -q` (Device Id) print them; optional :0xSSSSVVVV subsystem id.
_FILTER = re.compile(r"^0x([0-9a-f]{8})(?::0x([0-9a-f]{8}))?$", re.IGNORECASE)


# `-f -`: the config comes on standard input (nvidia-mig-parted's README
# pipes one-off configs in); messages name it STDIN_NAME instead of a path
STDIN_PATH = "-"
STDIN_NAME = "<stdin>"


def load_config(path: str | Path) -> ConfigFile:
    """Read and validate a config file (``-``: standard input); any problem
    raises ``SpecError``."""
    if str(path) == STDIN_PATH:
        return load_config_stream(sys.stdin)
    return _build(load_yaml_file(path), str(path))


def load_config_stream(stream: TextIO, name: str = STDIN_NAME) -> ConfigFile:
    """Read and validate a config from an open text stream; ``name`` stands
    for the file in every message (``<stdin>:3:5: ...``)."""
    try:
        text = stream.read()
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", SourceLocation(name, 0, 0)) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", SourceLocation(name, 0, 0)) from None
    return parse_config(text, name)


def parse_config(text: str, filename: str) -> ConfigFile:
    """Validate config text; ``filename`` is only used in messages."""
    return _build(load_yaml_text(text, filename), filename)


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a message stays one line."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return text.encode("unicode_escape").decode("ascii")
    return text


def reject_control_keys(node: YNode) -> None:
    """A mapping key with a newline or other control character is never
    meant, and would break the one-line error format and the selector
    drop-in (a config name ends up in ``Environment=``)."""
    if node.kind == "map":
        for key, child in node.value.items():
            if printable(key) != key:
                raise SpecError(f"key '{printable(key)}' contains a control character", node.key_locs[key])
            reject_control_keys(child)
    elif node.kind == "seq":
        for child in node.value:
            reject_control_keys(child)


def check_version(root: YNode, *, what: str) -> None:
    """``version: v1`` must be there; checked before the other keys so a
    newer file says "unsupported version" rather than "unknown key"."""
    items = require_map(root)
    node = items.get("version")
    if node is None:
        raise SpecError(f"missing required key 'version' (a {what} starts with 'version: {SUPPORTED_VERSION}')", root.loc)
    if node.kind != "scalar" or node.value != SUPPORTED_VERSION:
        shown = f"'{printable(str(node.value))}'" if node.kind == "scalar" else node.type_name
        raise SpecError(
            f"unsupported version {shown} (supported: {SUPPORTED_VERSION})", node.loc, field="version"
        )


def _build(root: YNode, filename: str) -> ConfigFile:
    check_version(root, what="config file")
    reject_control_keys(root)
    items = check_keys(root, TOP_KEYS, required=TOP_KEYS)
    configs_node = items["mig-configs"]
    configs_map = require_map(configs_node, field="mig-configs")
    if not configs_map:
        raise SpecError("no configs defined", configs_node.loc, field="mig-configs")
    configs: dict[str, MigConfig] = {}
    for name, node in configs_map.items():
        name_loc = configs_node.key_locs[name]
        if not name.strip():
            raise SpecError("config name must not be empty", name_loc, field="mig-configs")
        configs[name] = _config(name, node, name_loc)
    return ConfigFile(path=filename, configs=configs)


def _config(name: str, node: YNode, name_loc: SourceLocation) -> MigConfig:
    context = f"config '{name}'"
    entries = require_seq(node, context=context)
    if not entries:
        raise SpecError("a config needs at least one entry", node.loc, context=context)
    built = tuple(_entry(name, i, e) for i, e in enumerate(entries))
    return MigConfig(name=name, entries=built, loc=name_loc)


def _entry(config: str, position: int, node: YNode) -> ConfigEntry:
    context = f"config '{config}' entry {position}"
    items = check_keys(node, ENTRY_KEYS, required=("devices", "mig-enabled"), context=context)
    devices = _devices(items["devices"], context)
    filters = _filters(items["device-filter"], context) if "device-filter" in items else ()
    enabled = require_bool(items["mig-enabled"], context=context, field="mig-enabled")
    mig_devices: tuple[tuple[MigProfile, int], ...] = ()
    if "mig-devices" in items:
        key_loc = node.key_locs["mig-devices"]
        mig_devices = _mig_devices(items["mig-devices"], key_loc, enabled, context)
    elif enabled:
        raise SpecError(
            "missing required key 'mig-devices' (needed when mig-enabled is true; "
            "use 'mig-devices: {}' for MIG mode with no instances)",
            node.loc,
            context=context,
        )
    return ConfigEntry(
        config=config,
        position=position,
        devices=devices,
        device_filters=filters,
        mig_enabled=enabled,
        mig_devices=mig_devices,
        loc=node.loc,
    )


def _devices(node: YNode, context: str) -> Literal["all"] | tuple[int, ...]:
    if node.kind == "scalar" and node.value == "all":
        return "all"
    if node.kind != "seq":
        raise SpecError(
            f"expected 'all' or a list of GPU indices, got {_describe(node)}",
            node.loc,
            context=context,
            field="devices",
        )
    if not node.value:
        raise SpecError("the list of GPU indices is empty", node.loc, context=context, field="devices")
    seen: dict[int, int] = {}
    for i, item in enumerate(node.value):
        index = require_int(item, minimum=0, context=context, field=f"devices[{i}]")
        if index in seen:
            raise SpecError(
                f"GPU index {index} is listed twice (also devices[{seen[index]}])",
                item.loc,
                context=context,
                field=f"devices[{i}]",
            )
        seen[index] = i
    return tuple(seen)


def _filters(node: YNode, context: str) -> tuple[DeviceFilter, ...]:
    if node.kind == "scalar":
        return (_filter(node, context, "device-filter"),)
    if node.kind != "seq":
        raise SpecError(
            f"expected a PCI id string or a list of them, got {node.type_name}",
            node.loc,
            context=context,
            field="device-filter",
        )
    if not node.value:
        raise SpecError("the list of device filters is empty", node.loc, context=context, field="device-filter")
    return tuple(_filter(item, context, f"device-filter[{i}]") for i, item in enumerate(node.value))


def _filter(node: YNode, context: str, field: str) -> DeviceFilter:
    if node.kind == "scalar" and isinstance(node.value, int) and not isinstance(node.value, bool):
        # YAML reads an unquoted 0x20B010DE as a number; say how to fix it.
        raise SpecError(
            f"expected a string, got an integer; quote PCI ids, e.g. \"0x{node.value:08X}\"",
            node.loc,
            context=context,
            field=field,
        )
    text = require_str(node, context=context, field=field)
    m = _FILTER.match(text.strip())
    if m is None:
        raise SpecError(
            f"'{printable(text)}' is not a PCI device filter; expected 0xDDDDVVVV (device id, vendor id), "
            "optionally :0xSSSSVVVV (subsystem id), e.g. 0x20B010DE",
            node.loc,
            context=context,
            field=field,
        )
    sub = int(m[2], 16) if m[2] is not None else None
    return DeviceFilter(device_id=int(m[1], 16), subsystem_id=sub)


def _mig_devices(
    node: YNode, key_loc: SourceLocation, enabled: bool, context: str
) -> tuple[tuple[MigProfile, int], ...]:
    if node.kind != "map":
        raise SpecError(
            f"expected a mapping of MIG profile to count (use {{}} for none), got {node.type_name}",
            node.loc,
            context=context,
            field="mig-devices",
        )
    items: dict[str, YNode] = node.value
    if items and not enabled:
        raise SpecError(
            "MIG devices are listed but mig-enabled is false (use 'mig-devices: {}' or enable MIG)",
            key_loc,
            context=context,
            field="mig-devices",
        )
    first_seen: dict[MigProfile, str] = {}
    result: list[tuple[MigProfile, int]] = []
    for key, count_node in items.items():
        field = f"mig-devices.{key}"
        loc = node.key_locs[key]
        try:
            profile = MigProfile.parse(key)
        except ProfileNameError as exc:
            raise SpecError(str(exc), loc, context=context, field=field) from None
        if profile in first_seen:
            other = first_seen[profile]
            raise SpecError(
                f"'{key}' is the same MIG profile as '{other}' (line {node.key_locs[other].line}); list it once",
                loc,
                context=context,
                field=field,
            )
        first_seen[profile] = key
        count = require_int(count_node, minimum=0, context=context, field=field)
        if count:
            result.append((profile, count))
    if items and not result:
        raise SpecError(
            "every count is 0; use 'mig-devices: {}' for MIG mode with no instances",
            key_loc,
            context=context,
            field="mig-devices",
        )
    return tuple(result)


def _describe(node: YNode) -> str:
    if node.kind == "scalar" and isinstance(node.value, str):
        return f"'{printable(node.value)}'"
    return node.type_name
