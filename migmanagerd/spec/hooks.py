"""hooks.yaml (nvidia-mig-parted ``version: v1``) -> ``HooksFile``.

Hooks run as root during an apply, so the file is validated as strictly as
config.yaml: unknown hook names and keys, wrong types and empty commands are
errors pinned to file:line:col. See docs/hooks.md.
"""

from __future__ import annotations

from pathlib import Path

from migmanagerd.errors import SpecError
from migmanagerd.spec.config import check_version, reject_control_keys
from migmanagerd.spec.source import (
    YNode,
    check_keys,
    load_yaml_file,
    load_yaml_text,
    require_map,
    require_seq,
    require_str,
)
from migmanagerd.spec.types import HOOK_NAMES, HooksFile, HookSpec

TOP_KEYS = ("version", "hooks")
HOOK_KEYS = ("command", "args", "envs", "workdir")


def load_hooks(path: str | Path) -> HooksFile:
    """Read and validate a hooks file; any problem raises ``SpecError``."""
    return _build(load_yaml_file(path), str(path))


def parse_hooks(text: str, filename: str) -> HooksFile:
    """Validate hooks text; ``filename`` is only used in messages."""
    return _build(load_yaml_text(text, filename), filename)


def _build(root: YNode, filename: str) -> HooksFile:
    check_version(root, what="hooks file")
    reject_control_keys(root)
    items = check_keys(root, TOP_KEYS, required=TOP_KEYS)
    hooks_node = items["hooks"]
    hooks_map = require_map(hooks_node, field="hooks")
    hooks: dict[str, tuple[HookSpec, ...]] = {}
    for name, node in hooks_map.items():
        if name not in HOOK_NAMES:
            raise SpecError(
                f"unknown hook '{name}' (allowed: {', '.join(HOOK_NAMES)})",
                hooks_node.key_locs[name],
                field=f"hooks.{name}",
            )
        specs = require_seq(node, context=f"hook '{name}'")
        hooks[name] = tuple(_spec(name, i, s) for i, s in enumerate(specs))
    return HooksFile(path=filename, hooks=hooks)


def _spec(name: str, index: int, node: YNode) -> HookSpec:
    context = f"hook {name}[{index}]"
    items = check_keys(node, HOOK_KEYS, required=("command",), context=context)
    command = _non_empty_str(items["command"], context, "command")
    args: tuple[str, ...] = ()
    if "args" in items:
        arg_nodes = require_seq(items["args"], context=context, field="args")
        args = tuple(_arg(n, context, f"args[{i}]") for i, n in enumerate(arg_nodes))
    envs: dict[str, str] = {}
    if "envs" in items:
        envs = _envs(items["envs"], context)
    workdir = _non_empty_str(items["workdir"], context, "workdir") if "workdir" in items else None
    return HookSpec(command=command, args=args, envs=envs, workdir=workdir, loc=node.loc)


def _non_empty_str(node: YNode, context: str, field: str) -> str:
    text = require_str(node, context=context, field=field)
    if not text.strip():
        raise SpecError("must not be empty", node.loc, context=context, field=field)
    _no_nul(text, node, context, field)
    return text


def _arg(node: YNode, context: str, field: str) -> str:
    text = require_str(node, context=context, field=field)
    _no_nul(text, node, context, field)
    return text


def _envs(node: YNode, context: str) -> dict[str, str]:
    items = require_map(node, context=context, field="envs")
    envs: dict[str, str] = {}
    for key, value_node in items.items():
        field = f"envs.{key}"
        # A name with '=' or NUL cannot be put in an environment block.
        if not key or "=" in key or "\0" in key:
            raise SpecError(
                f"'{key}' is not a valid environment variable name", node.key_locs[key], context=context, field=field
            )
        value = require_str(value_node, context=context, field=field)
        _no_nul(value, value_node, context, field)
        envs[key] = value
    return envs


def _no_nul(text: str, node: YNode, context: str, field: str) -> None:
    if "\0" in text:
        raise SpecError("contains a NUL character", node.loc, context=context, field=field)
