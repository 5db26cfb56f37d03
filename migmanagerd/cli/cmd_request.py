"""``migmanagerd request``: MIG devices for a job, made on demand (docs/ondemand.md).

Exit 0 served (UUIDs and a CUDA_VISIBLE_DEVICES line printed), 1 refused or
failed (nothing changed), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from migmanagerd.apply.observe import NodeState
from migmanagerd.cli.common import add_backend, add_config_file, add_debug, add_hooks_file
from migmanagerd.cli.picture import add_picture_options, picture_wanted
from migmanagerd.errors import MigManagerError, UsageError
from migmanagerd.ondemand.geometries import (
    DEVICE_CONFIG_NAME,
    AllowedGeometries,
    default_path,
    load_geometries,
    load_trusted_geometries,
)
from migmanagerd.ondemand.leases import caller_owner
from migmanagerd.ondemand.request import BINPACK, POLICIES, Request
from migmanagerd.ondemand.serve import HookCalls, OnDemand, Served
from migmanagerd.service.paths import NodePaths
from migmanagerd.spec.profile import MigProfile, ProfileNameError

GEOMETRIES_ENV = "MIGMANAGERD_GEOMETRIES_FILE"


def add_geometries(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--geometries", metavar="FILE", default=os.environ.get(GEOMETRIES_ENV) or None,
        help=f"allowed geometries, HAMi's device-config format (env {GEOMETRIES_ENV}; default "
        f"{DEVICE_CONFIG_NAME} next to config.yaml if it exists, else every maximal layout from the catalog)",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "request",
        help="hand out MIG devices for a job, changing one GPU's layout if needed",
        description="Hand out COUNT MIG devices of at least MIB MiB (or of --profile): free instances first, "
        "smallest that fit; else change the layout of one GPU at a time to the first allowed geometry that "
        "keeps every busy or leased instance where it is. Each device is leased to --owner (default: the "
        "calling process, released when it exits). GPU clients are never stopped; hooks run as in apply. "
        "Exit 0 served, 1 refused (nothing changed) or failed, 2 bad input.",
    )
    p.add_argument("--count", type=int, default=1, metavar="N", help="how many MIG devices (default 1)")
    p.add_argument("--memory", type=int, default=None, metavar="MIB", help="memory each device offers at least, MiB")
    p.add_argument("--profile", default=None, metavar="NAME", help="exactly this MIG profile, e.g. 2g.10gb")
    p.add_argument("--owner", default=None, metavar="ID", help="lease owner (a job id); default: the calling process")
    p.add_argument("--policy", choices=POLICIES, default=BINPACK, help="binpack: busiest GPU that fits; spread: emptiest")
    p.add_argument("--dry-run", action="store_true", help="show what would be handed out and changed; change nothing")
    p.add_argument(
        "--persist", metavar="NAME", default=None,
        help="after serving, write the node's layout as config NAME (in ondemand.yaml next to config.yaml) and select it for boot",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_picture_options(p)
    add_geometries(p)
    add_config_file(p)
    add_hooks_file(p)
    add_backend(p)
    add_debug(p)
    p.set_defaults(func=run)


def allowed_geometries(args: argparse.Namespace, paths: NodePaths) -> AllowedGeometries:
    path = getattr(args, "geometries", None)
    if path is None:
        candidate = default_path(Path(getattr(args, "config_file", None) or paths.config_file))
        if candidate.exists():
            path = str(candidate)
    if path is None:
        return load_geometries(None)
    return load_trusted_geometries(path)  # it decides layouts, as config.yaml does


def open_ondemand(args: argparse.Namespace, paths: NodePaths | None = None) -> OnDemand:
    from migmanagerd.apply.engine import ApplyEngine
    from migmanagerd.gpu.factory import open_backend

    paths = paths or NodePaths.from_env()
    allowed = allowed_geometries(args, paths)
    return OnDemand(ApplyEngine(open_backend(getattr(args, "backend", None))), paths, allowed)


def _request(args: argparse.Namespace) -> Request:
    if args.count < 1:
        raise UsageError(f"--count {args.count}: must be at least 1")
    if args.memory is None and args.profile is None:
        raise UsageError("give --memory MIB or --profile NAME")
    if args.memory is not None and args.memory < 1:
        raise UsageError(f"--memory {args.memory}: must be at least 1 MiB")
    profile = None
    if args.profile is not None:
        try:
            profile = str(MigProfile.parse(args.profile))
        except ProfileNameError as exc:
            raise UsageError(f"--profile: {exc}") from None
    return Request(args.count, args.memory, profile, args.policy)


def _dropin_selection(paths: NodePaths) -> str:
    """The boot-time selection (the hooks are told it; a request does not change it)."""
    from migmanagerd.service.selector import read_selector

    try:
        return read_selector(paths.dropin).selected_config or ""
    except MigManagerError:
        return ""


def hook_calls(args: argparse.Namespace, paths: NodePaths, owner: str) -> HookCalls:
    from migmanagerd.hooks.runner import HookRunner, hook_env
    from migmanagerd.service.inputs import load_trusted_hooks

    path = args.hooks_file
    # the boot's own rules: one checked descriptor, and a broken link is an error
    hooks = load_trusted_hooks(path, paths.hooks_file)
    if path is None and hooks.path:
        path = hooks.path
    config_file = args.config_file or str(paths.config_file)
    selected = os.environ.get("MIG_PARTED_SELECTED_CONFIG") or _dropin_selection(paths)

    def runner_for(gpus: Sequence[int]) -> HookRunner:
        env = hook_env(
            selected_config=selected, config_file=config_file,
            hooks_file=path or str(paths.hooks_file), gpus=gpus,
        )
        env["MIGMANAGERD_REQUEST_OWNER"] = owner
        return HookRunner(hooks, env)

    return HookCalls(runner_for)


def served_json(served: Served) -> dict[str, Any]:
    return {
        "owner": served.owner,
        "devices": [
            {"uuid": d.uuid, "gpu": d.gpu, "profile": d.profile, "memory_mib": d.memory_mib, "start": d.placement.start}
            for d in served.devices
        ],
        "changed_gpus": [c.gpu for c in served.selection.changes],
        "geometries": {str(c.gpu): c.geometry.describe() for c in served.selection.changes},
        "cuda_visible_devices": served.cuda_visible_devices,
    }


def picture(served: Served, no_color: bool) -> list[str]:
    from migmanagerd.cli.picture import BUSY, LEASED, draw, request_rows, use_color

    plans = {c.gpu: c.plan for c in served.selection.changes}
    handed = [(h.gpu, h.placement.start, h.profile) for h in served.selection.handouts]
    marks = {**{u: LEASED for u in served.leased}, **{u: BUSY for u in served.busy}}
    rows = request_rows(served.before, plans, marks, handed)
    return draw(rows, use_color(no_color))


def dry_run_text(served: Served) -> list[str]:
    """One line per GPU this request would change (the ``plan`` wording)."""
    def devs(devices: Any) -> str:
        return ", ".join(f"{d.profile}@{d.placement.start}" for d in devices)

    lines = []
    for c in served.selection.changes:
        parts = [f"geometry {c.geometry.describe()}"]
        for word, devices in (("keep", c.plan.keep), ("destroy", c.plan.destroy), ("create", c.plan.create)):
            if devices:
                parts.append(f"{word} {devs(devices)}")
        lines.append(f"GPU {c.gpu}: " + "; ".join(parts))
    if not served.selection.changes:
        lines.append("no layout change: free instances serve the request")
    return lines


def _owner(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.owner is None:
        return caller_owner()
    if not args.owner.strip():
        raise UsageError("--owner: must not be empty")
    return args.owner, None


def _persist(args: argparse.Namespace, paths: NodePaths) -> Callable[[NodeState], None] | None:
    if not args.persist:
        return None
    from migmanagerd.ondemand.persist import persist_layout

    def persist(state: NodeState) -> None:
        persist_layout(state, args.persist, paths)

    return persist


def _print(args: argparse.Namespace, served: Served) -> None:
    if args.json:
        doc = served_json(served)
        doc["dry_run"] = bool(args.dry_run)
        print(json.dumps(doc, indent=2))
        return
    if args.dry_run:
        for line in dry_run_text(served):
            print(line)
        if picture_wanted(args):
            print("\n".join(picture(served, args.no_color)))
    for d in served.devices:
        print(f"GPU {d.gpu} {d.profile} {d.uuid}")
    if not args.dry_run:
        print(f"CUDA_VISIBLE_DEVICES={served.cuda_visible_devices}")
        print(f"leased to {served.owner}; free them with: migmanagerd release --owner {served.owner}")


def run(args: argparse.Namespace) -> int:
    req = _request(args)
    paths = NodePaths.from_env()
    owner, pid_start = _owner(args)
    od = open_ondemand(args, paths)
    try:
        hooks = None if args.dry_run else hook_calls(args, paths, owner)
        served = od.request(req, owner, pid_start, dry_run=args.dry_run, hooks=hooks, persist=_persist(args, paths))
    finally:
        od.backend.close()
    _print(args, served)
    return 0
