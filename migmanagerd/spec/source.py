"""YAML loading that remembers where every value came from.

Operators' files are parsed into ``YNode`` trees: each node keeps its value and
its file:line:column, so a validator can say exactly where a bad value is.
libyaml (or, where PyYAML lacks it, PyYAML's pure-Python parser) gives the
events with their marks; the nodes are composed here so that duplicate keys
(silently merged by plain ``yaml.safe_load``) become errors and so that
nesting depth and alias expansion are bounded before any value is built
(docs/fault-matrix.md, "bounded").
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


def load_yaml_text(text: str, filename: str) -> YNode:
    """Parse ``text``; syntax errors, duplicate keys and files over the
    nesting and alias-expansion bounds raise ``SpecError``."""
    parser = _Loader(text)
    try:
        root = _Composer(filename).compose(parser)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = SourceLocation(filename, mark.line + 1, mark.column + 1) if mark else SourceLocation(filename, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"YAML syntax error: {problem}", loc) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", SourceLocation(filename, 1, 1)) from None
    finally:
        parser.dispose()
    if root is None:
        raise SpecError("file is empty", SourceLocation(filename, 1, 1))
    return root


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


# --- composing: libyaml's events, our own bounded composer ---------------------

# libyaml (PyYAML's C extension, Debian's python3-yaml) parses about ten times
# faster than PyYAML's pure-Python scanner, and accepts tab-separated JSON that
# the pure-Python one refuses. Its C *composer* recurses without a bound
# (100000 nested '[' crash the interpreter), so only its event stream is used:
# nodes are built here, iteratively, with limits.
_Loader: Any
try:
    _Loader = yaml.CSafeLoader
    LOADER_NAME = "libyaml (CSafeLoader)"
except AttributeError:  # PyYAML built without libyaml
    _Loader = yaml.SafeLoader
    LOADER_NAME = "pure Python (SafeLoader)"

# Operator files nest a handful of levels and hold a few thousand values.
# Aliases are not copied (an alias is the same YNode), but every consumer walks
# the tree as a tree, so a "billion laughs" file costs what its expanded size
# costs: both are bounded while composing, before any value is constructed.
MAX_DEPTH = 64
MAX_EXPANDED_NODES = 100_000
_MERGE = "<<"
_STD_TAGS = {"map": "tag:yaml.org,2002:map", "seq": "tag:yaml.org,2002:seq"}


class _Open:
    """A mapping or sequence whose end event has not come yet."""

    __slots__ = ("anchor", "depth", "key", "kind", "loc", "node", "size")

    def __init__(self, kind: str, loc: SourceLocation, anchor: str | None, depth: int) -> None:
        self.kind = kind
        self.loc = loc
        self.anchor = anchor
        self.depth = depth
        self.size = 1
        self.key: tuple[str, SourceLocation, bool] | None = None  # a mapping's pending key
        # (key, key location, value, merge?) in file order, or the items of a sequence
        self.node: list[Any] = []


class _Composer:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.anchors: dict[str, tuple[YNode, int, int]] = {}  # name -> (node, expanded size, depth)
        self.open_anchors: set[str] = set()
        self.total = 0
        self.constructor = yaml.SafeLoader("")

    def loc(self, mark: Any) -> SourceLocation:
        return SourceLocation(self.filename, mark.line + 1, mark.column + 1)

    def compose(self, parser: Any) -> YNode | None:
        parser.get_event()  # StreamStart
        if parser.check_event(yaml.StreamEndEvent):
            return None
        parser.get_event()  # DocumentStart
        root = self._document(parser)
        parser.get_event()  # DocumentEnd
        if not parser.check_event(yaml.StreamEndEvent):
            event = parser.get_event()
            raise SpecError("YAML syntax error: expected a single document in the file, found another one",
                            self.loc(event.start_mark))
        return root

    def _document(self, parser: Any) -> YNode:
        stack: list[_Open] = []
        while True:
            event = parser.get_event()
            loc = self.loc(event.start_mark)
            done = self._step(event, stack, loc)
            if done is None:
                continue
            node, size, depth = done
            if len(stack) + depth > MAX_DEPTH:
                how = " (through aliases)" if isinstance(event, yaml.AliasEvent) else ""
                raise SpecError(f"nested more than {MAX_DEPTH} levels deep{how}", loc)
            # an alias expands to its whole subtree; anything else is one new value
            self.total += size if isinstance(event, yaml.AliasEvent) else 1
            if self.total > MAX_EXPANDED_NODES:
                raise SpecError(
                    f"more than {MAX_EXPANDED_NODES} values once aliases are expanded (a YAML alias bomb?)", loc
                )
            if not stack:
                return node
            self._add(stack[-1], node, size, depth, loc, event)

    def _step(self, event: Any, stack: list[_Open], loc: SourceLocation) -> tuple[YNode, int, int] | None:
        """Apply one event; returns a finished node (with its expanded size
        and depth), or None while a collection is still open."""
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth = len(stack) + 1
            if depth > MAX_DEPTH:
                raise SpecError(f"nested more than {MAX_DEPTH} levels deep", loc)
            kind = "map" if isinstance(event, yaml.MappingStartEvent) else "seq"
            if event.tag not in (None, "!", _STD_TAGS[kind]):
                # e.g. !!python/object/apply: never constructed, so never silently plain either
                raise SpecError(f"unsupported tag '{event.tag}' on a {'mapping' if kind == 'map' else 'list'}", loc)
            if event.anchor is not None:
                self.open_anchors.add(event.anchor)
            stack.append(_Open(kind, loc, event.anchor, depth))
            return None
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            top = stack.pop()
            done = (self._close(top), top.size, self._depth_below(top))
            if top.anchor is not None:
                self.open_anchors.discard(top.anchor)
                self.anchors[top.anchor] = done
            return done
        if isinstance(event, yaml.ScalarEvent):
            is_key = bool(stack) and stack[-1].kind == "map" and stack[-1].key is None
            # a key is kept as written (see _add); only values are constructed
            node = YNode(event.value, loc, "scalar") if is_key else self._scalar(event, loc)
            if event.anchor is not None:
                self.anchors[event.anchor] = (node, 1, 1)
            return (node, 1, 1)
        if isinstance(event, yaml.AliasEvent):
            return self._alias(str(event.anchor), loc)
        raise SpecError(f"YAML syntax error: unexpected {type(event).__name__}", loc)

    def _alias(self, anchor: str, loc: SourceLocation) -> tuple[YNode, int, int]:
        if anchor in self.open_anchors:
            raise SpecError(f"alias '*{anchor}' refers to a node that contains it (a recursive anchor)", loc)
        found = self.anchors.get(anchor)
        if found is None:  # the parser reports this first; kept as a safety net
            raise SpecError(f"alias '*{anchor}' names no anchor defined before it", loc)
        return found

    @staticmethod
    def _depth_below(top: _Open) -> int:
        return 1 + max((item[3] for item in top.node), default=0) if top.kind == "seq" else 1 + max(
            (item[4] for item in top.node), default=0
        )

    def _add(self, parent: _Open, node: YNode, size: int, depth: int, loc: SourceLocation, event: Any) -> None:
        parent.size += size
        if parent.kind == "seq":
            parent.node.append((node, size, loc, depth))
            return
        if parent.key is None:
            if node.kind != "scalar" or not isinstance(event, yaml.ScalarEvent):
                raise SpecError("mapping keys must be plain scalars", loc)
            # Keys are names (configs, profiles, hooks): take the text as written,
            # so YAML 1.1 does not turn a config called `off` into False or
            # `0x20B0` into 8368. Only a plain, untagged `<<` is a merge key.
            merge = event.value == _MERGE and event.implicit[0] and event.tag in (None, "!")
            parent.key = (event.value, loc, merge)
            return
        key, key_loc, merge = parent.key
        parent.key = None
        parent.node.append((key, key_loc, node, merge, depth))

    def _close(self, top: _Open) -> YNode:
        if top.kind == "seq":
            return YNode([item[0] for item in top.node], top.loc, "seq")
        items: dict[str, YNode] = {}
        key_locs: dict[str, SourceLocation] = {}
        merged: dict[str, tuple[YNode, SourceLocation]] = {}
        for key, key_loc, value, merge, _depth in top.node:
            if merge:
                for name, (child, child_loc) in _merge_sources(value).items():
                    merged.setdefault(name, (child, child_loc))
                continue
            if key in items:
                first = key_locs[key]
                raise SpecError(f"duplicate key '{key}' (first defined at line {first.line})", key_loc)
            key_locs[key] = key_loc
            items[key] = value
        # YAML merge keys: explicit keys win, then the first merged mapping
        for name, (child, child_loc) in merged.items():
            if name not in items:
                items[name] = child
                key_locs[name] = child_loc
        return YNode(items, top.loc, "map", key_locs)

    def _scalar(self, event: Any, loc: SourceLocation) -> YNode:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.constructor.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            value = self.constructor.construct_object(node)
        except yaml.constructor.ConstructorError as exc:
            raise SpecError(f"invalid value: {exc.problem}", loc) from None
        return YNode(value, loc, "scalar")


def _merge_sources(value: YNode) -> dict[str, tuple[YNode, SourceLocation]]:
    """The keys a ``<<`` value brings: a mapping, or a list of mappings (the
    first one listed wins)."""
    sources = value.value if value.kind == "seq" else [value]
    found: dict[str, tuple[YNode, SourceLocation]] = {}
    for source in sources:
        if source.kind != "map":
            raise SpecError(
                f"a merge key '<<' takes a mapping or a list of mappings, got {source.type_name}", source.loc
            )
        for name, child in source.value.items():
            found.setdefault(name, (child, source.key_locs[name]))
    return found


# --- helpers shared by the validators of config.yaml, hooks.yaml, clients.yaml ---


def require_map(node: YNode, *, context: str | None = None, field: str | None = None) -> dict[str, YNode]:
    if node.kind != "map":
        raise SpecError(f"expected a mapping, got {node.type_name}", node.loc, context=context, field=field)
    mapping: dict[str, YNode] = node.value
    return mapping


def require_seq(node: YNode, *, context: str | None = None, field: str | None = None) -> list[YNode]:
    if node.kind != "seq":
        raise SpecError(f"expected a list, got {node.type_name}", node.loc, context=context, field=field)
    items: list[YNode] = node.value
    return items


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
