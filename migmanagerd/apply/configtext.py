"""Write nvidia-mig-parted ``version: v1`` config text (``export``,
``generate-config``).

Written by hand rather than by a YAML dumper so the output looks like the
files operators already keep: quoted profile names and PCI ids (an unquoted
``0x20B010DE`` is a YAML 1.1 hex integer, not a string), one entry per block,
comments where they help.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class EntryText:
    devices: Literal["all"] | tuple[int, ...]
    device_filters: tuple[int, ...]  # 32-bit 0xDDDDVVVV
    mig_enabled: bool
    mig_devices: tuple[tuple[str, int], ...] = ()
    comment: str | None = None


@dataclass(frozen=True)
class ConfigText:
    name: str
    entries: tuple[EntryText, ...]
    comment: str | None = None


def _key(text: str) -> str:
    # Names that YAML could read as something else (numbers, booleans) get quotes.
    if _PLAIN.match(text) and not re.match(r"^[0-9.+-]+$|^(true|false|yes|no|on|off|null)$", text, re.I):
        return text
    return json.dumps(text)


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


def render_entry(entry: EntryText, indent: str = "    ") -> list[str]:
    lines: list[str] = []
    if entry.comment:
        lines += _comment(entry.comment, indent)
    first = f"{indent}- "
    rest = f"{indent}  "
    fields: list[str] = []
    if entry.device_filters:
        ids = ", ".join(json.dumps(f"0x{f:08X}") for f in entry.device_filters)
        fields.append(f"device-filter: [{ids}]")
    devices = "all" if entry.devices == "all" else "[" + ", ".join(str(i) for i in entry.devices) + "]"
    fields.append(f"devices: {devices}")
    fields.append(f"mig-enabled: {'true' if entry.mig_enabled else 'false'}")
    for n, text in enumerate(fields):
        lines.append((first if n == 0 else rest) + text)
    if entry.mig_enabled:
        if entry.mig_devices:
            lines.append(f"{rest}mig-devices:")
            for profile, count in entry.mig_devices:
                lines.append(f"{rest}  {json.dumps(profile)}: {count}")
        else:
            lines.append(f"{rest}mig-devices: {{}}")
    return lines


def render_config_file(configs: Sequence[ConfigText], header: str | None = None) -> str:
    lines: list[str] = []
    if header:
        lines += _comment(header, "")
    lines += ["version: v1", "mig-configs:"]
    for n, config in enumerate(configs):
        if n:
            lines.append("")
        if config.comment:
            lines += _comment(config.comment, "  ")
        lines.append(f"  {_key(config.name)}:")
        for entry in config.entries:
            lines += render_entry(entry)
    return "\n".join(lines) + "\n"


def config_json(configs: Sequence[ConfigText]) -> dict[str, Any]:
    """The same configs as nvidia-mig-parted's JSON spelling of a v1 file."""
    out: dict[str, Any] = {}
    for config in configs:
        items = []
        for e in config.entries:
            item: dict[str, Any] = {}
            if e.device_filters:
                item["device-filter"] = [f"0x{f:08X}" for f in e.device_filters]
            item["devices"] = "all" if e.devices == "all" else list(e.devices)
            item["mig-enabled"] = e.mig_enabled
            if e.mig_enabled:
                item["mig-devices"] = {p: n for p, n in e.mig_devices}
            items.append(item)
        out[config.name] = items
    return {"version": "v1", "mig-configs": out}
