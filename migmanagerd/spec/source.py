"""YAML loading that remembers where every value came from.

Operators' files are parsed into ``YNode`` trees: each node keeps its value and
its file:line:column, so a validator can say exactly where a bad value is.
PyYAML's composer gives node marks; we construct scalars ourselves so that
duplicate keys (silently merged by plain ``yaml.safe_load``) become errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from migmanagerd.errors import SourceLocation, SpecError


@dataclass
class YNode:
    """One YAML value with its source location.

    ``value`` is a ``dict[str, YNode]`` for mappings, a ``list[YNode]`` for
    sequences, else the plain scalar (str, int, bool, float or None).
    """

    value: Any
    loc: SourceLocation
    kind: str  # "map", "seq" or "scalar"
    key_locs: dict[str, SourceLocation] = field(default_factory=dict)

    @property
    def type_name(self) -> str:
        if self.kind != "scalar":
            return {"map": "a mapping", "seq": "a list"}[self.kind]
        return describe_type(self.value)


def describe_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return "a string"


def _loc(mark: yaml.Mark, filename: str) -> SourceLocation:
    return SourceLocation(filename, mark.line + 1, mark.column + 1)


def load_yaml_text(text: str, filename: str) -> YNode:
    """Parse ``text``; syntax errors and duplicate keys raise ``SpecError``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = _loc(mark, filename) if mark else SourceLocation(filename, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"YAML syntax error: {problem}", loc) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", SourceLocation(filename, 1, 1)) from None
    if root is None:
        raise SpecError("file is empty", SourceLocation(filename, 1, 1))
    return _convert(root, filename, yaml.SafeLoader(""))


def load_yaml_file(path: str | Path) -> YNode:
    """Read and parse a file; an unreadable file is a ``SpecError`` too."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file not found", SourceLocation(name, 0, 0)) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError(f"cannot read file: {reason}", SourceLocation(name, 0, 0)) from None
    return load_yaml_text(text, name)


def _convert(node: yaml.Node, filename: str, constructor: yaml.SafeLoader) -> YNode:
    loc = _loc(node.start_mark, filename)
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)  # resolves YAML merge keys (<<)
        items: dict[str, YNode] = {}
        key_locs: dict[str, SourceLocation] = {}
        for key_node, value_node in node.value:
            key_loc = _loc(key_node.start_mark, filename)
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError("mapping keys must be plain scalars", key_loc)
            # Keys are names (configs, profiles, hooks): take the text as written,
            # so YAML 1.1 does not turn a config called `off` into False or
            # `0x20B0` into 8368.
            key = key_node.value
            if key in items:
                first = key_locs[key]
                raise SpecError(
                    f"duplicate key '{key}' (first defined at line {first.line})", key_loc
                )
            key_locs[key] = key_loc
            items[key] = _convert(value_node, filename, constructor)
        return YNode(items, loc, "map", key_locs)
    if isinstance(node, yaml.SequenceNode):
        return YNode([_convert(n, filename, constructor) for n in node.value], loc, "seq")
    try:
        value = constructor.construct_object(node)
    except yaml.constructor.ConstructorError as exc:
        raise SpecError(f"invalid value: {exc.problem}", loc) from None
    return YNode(value, loc, "scalar")


# --- helpers shared by the validators of config.yaml, hooks.yaml, clients.yaml ---


def require_map(node: YNode, *, context: str | None = None, field: str | None = None) -> dict[str, YNode]:
    if node.kind != "map":
        raise SpecError(f"expected a mapping, got {node.type_name}", node.loc, context=context, field=field)
    return node.value


def require_seq(node: YNode, *, context: str | None = None, field: str | None = None) -> list[YNode]:
    if node.kind != "seq":
        raise SpecError(f"expected a list, got {node.type_name}", node.loc, context=context, field=field)
    return node.value


def require_str(node: YNode, *, context: str | None = None, field: str | None = None) -> str:
    if node.kind != "scalar" or not isinstance(node.value, str):
        raise SpecError(f"expected a string, got {node.type_name}", node.loc, context=context, field=field)
    return node.value


def require_bool(node: YNode, *, context: str | None = None, field: str | None = None) -> bool:
    if node.kind != "scalar" or not isinstance(node.value, bool):
        raise SpecError(f"expected true or false, got {node.type_name}", node.loc, context=context, field=field)
    return node.value


def require_int(
    node: YNode, *, minimum: int | None = None, context: str | None = None, field: str | None = None
) -> int:
    if node.kind != "scalar" or isinstance(node.value, bool) or not isinstance(node.value, int):
        raise SpecError(f"expected an integer, got {node.type_name}", node.loc, context=context, field=field)
    if minimum is not None and node.value < minimum:
        raise SpecError(f"must be at least {minimum}, got {node.value}", node.loc, context=context, field=field)
    return node.value


def check_keys(
    node: YNode,
    allowed: Iterable[str],
    required: Iterable[str] = (),
    *,
    context: str | None = None,
    field: str | None = None,
) -> dict[str, YNode]:
    """Reject unknown keys and report missing required ones, with locations."""
    items = require_map(node, context=context, field=field)
    allowed = tuple(allowed)
    for key in items:
        if key not in allowed:
            where = f"{field}.{key}" if field else key
            raise SpecError(
                f"unknown key '{key}' (allowed: {', '.join(allowed)})",
                node.key_locs[key],
                context=context,
                field=where,
            )
    for key in required:
        if key not in items:
            raise SpecError(f"missing required key '{key}'", node.loc, context=context, field=field)
    return items
