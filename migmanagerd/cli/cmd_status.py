"""``migmanagerd status``: what the node has, what is selected, how the last run went."""

from __future__ import annotations

import argparse
import json
from typing import Any

from migmanagerd.cli.common import add_backend, add_config_file, add_debug
from migmanagerd.cli.picture import add_picture_options
from migmanagerd.errors import MigManagerError
from migmanagerd.log import escape_controls


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status",
        help="show GPUs, the selection and where it comes from, the last run, and whether the node matches",
        description="GPUs with MIG mode and MIG devices; the selected config and its source (environment, "
        "the unit's drop-in, or state.json); the last run's result and time; whether the node matches the "
        "selection; an interrupted run's journal, the reboot guard and what the integrations last did. "
        "Exit 0 always when the state could be read (see 'assert' for a check).",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (keys in the README)")
    add_picture_options(p)
    add_config_file(p)
    add_backend(p)
    add_debug(p)
    p.set_defaults(func=run)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    from migmanagerd.apply.compare import differences
    from migmanagerd.apply.render import node_json
    from migmanagerd.cli.persisted_args import fill_from_persisted
    from migmanagerd.cli.selection import open_engine
    from migmanagerd.service.paths import NodePaths
    from migmanagerd.service.state import StateStore, state_to_json
    from migmanagerd.spec.selection import pick_config, read_config_file

    paths = NodePaths.from_env()
    loaded = StateStore(paths).load()
    state_doc = json.loads(state_to_json(loaded.state))
    # the selection and config file the unit uses (env > drop-in > state.json)
    persisted = fill_from_persisted(args, paths)
    name, source = persisted.name, persisted.source
    doc: dict[str, Any] = {
        "selection": {"config": name, "source": source, "config_file": args.config_file},
        "matches": None,
        "differences": [],
        "gpus": [],
        "leases": [],
        "busy_devices": [],
        "last_run": state_doc["last_run"],
        "journal": state_doc["journal"],
        "reboot_guard": state_doc["reboot_guard"],
        "integrations": state_doc["integrations"],
        "problems": [p for p in (loaded.problem, persisted.problem) if p],
    }
    engine = open_engine(args)
    try:
        node = engine.observe()
        doc["gpus"] = node_json(node)["gpus"]
        doc["leases"] = leases_json(paths, node)
        doc["busy_devices"] = busy_json(engine.backend, node, doc["problems"])
        if name:
            try:
                config = pick_config(read_config_file(args.config_file), name)
                diffs = differences(engine.plan(config, state=node))
                doc["matches"] = not diffs
                doc["differences"] = diffs
            except MigManagerError as exc:
                doc["problems"].append(str(exc))
    finally:
        engine.backend.close()
    return doc


def leases_json(paths: Any, node: Any) -> list[dict[str, Any]]:
    from migmanagerd.ondemand.serve import live_leases

    try:
        book = live_leases(paths, node)
    except MigManagerError as exc:
        return [{"problem": str(exc)}]
    return [
        {"uuid": x.uuid, "gpu": x.gpu, "profile": x.profile, "owner": x.owner, "created_at": x.created_at}
        for x in book.leases
    ]


def busy_json(backend: Any, node: Any, problems: list[str]) -> list[str]:
    """UUIDs of the MIG devices a process runs on (sorted)."""
    from migmanagerd.ondemand.serve import busy_devices

    try:
        return sorted(busy_devices(backend, node))
    except MigManagerError as exc:
        problems.append(f"cannot list the processes on MIG devices: {exc}")
        return []


def lease_lines(leases: list[dict[str, Any]]) -> list[str]:
    if not leases:
        return []
    out = ["", "Leases:"]
    for x in leases:
        if "problem" in x:
            out.append(f"  problem: {x['problem']}")
        else:
            out.append(f"  GPU {x['gpu']} {x['profile']} {x['uuid']} owner {x['owner']} since {x['created_at']}")
    return out


def run(args: argparse.Namespace) -> int:
    from migmanagerd.cli.picture import BUSY, LEASED, draw, json_rows, picture_wanted, use_color

    doc = collect(args)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(render(doc))
    if picture_wanted(args):
        marks = {x["uuid"]: LEASED for x in doc.get("leases", []) if "uuid" in x}
        marks.update({u: BUSY for u in doc.get("busy_devices", [])})
        print()
        print("\n".join(draw(json_rows(doc["gpus"], marks), use_color(args.no_color))))
    return 0


def render(doc: dict[str, Any]) -> str:
    out = []
    sel = doc["selection"]
    out.append(f"Selected config: {sel['config'] or '(none)'}" + (f"  [from {sel['source']}]" if sel["source"] else ""))
    if doc["matches"] is None:
        out.append("Node matches:    unknown")
    else:
        out.append(f"Node matches:    {'yes' if doc['matches'] else 'no'}")
        out.extend(f"  - {d}" for d in doc["differences"])
    last = doc["last_run"]
    if last:
        out.append(
            f"Last run:        {last['result']} (exit {last['exit_code']}) config '{last['config']}' "
            f"at {last['finished_at']}"
        )
        if last.get("message"):
            out.append(f"                 {last['message']}")
        out.extend(_gpu_result_lines(last.get("gpus") or {}))
    else:
        out.append("Last run:        none recorded")
    if doc["journal"]:
        j = doc["journal"]
        out.append(f"In flight:       run pid {j['pid']} phase '{j['phase']}', stopped: {', '.join(j['stopped_units']) or '-'}")
    if doc["reboot_guard"]:
        r = doc["reboot_guard"]
        out.append(
            f"Reboot guard:    armed at {r['armed_at']} for config '{r['config']}' "
            "(re-arm: migmanagerd service --rearm-reboot)"
        )
    for name, what in (doc.get("integrations") or {}).items():
        if isinstance(what, dict) and what.get("enabled"):
            detail = what.get("status") or what.get("action") or "done"
            out.append(f"Integration:     {name}: {detail}")
    for p in doc["problems"]:
        out.append(f"Problem:         {p}")
    out.append("")
    out.append(f"{'GPU':<4} {'MODEL':<18} {'MIG':<9} INSTANCES")
    for g in doc["gpus"]:
        mode = "on" if g["mig_enabled"] else "off"
        if g["mig_pending"] != g["mig_enabled"]:
            mode += "->" + ("on" if g["mig_pending"] else "off")
        inst = ", ".join(f"{i['profile']}@{i['start']}" for i in g["instances"]) or "-"
        out.append(f"{g['index']:<4} {str(g['model'] or '?'):<18} {mode:<9} {inst}")
    out.extend(lease_lines(doc.get("leases") or []))
    # names come from the drop-in, state.json and -c: never print their control characters raw
    return "\n".join(map(escape_controls, out))


def _gpu_result_lines(gpus: dict[str, Any]) -> list[str]:
    """The last run's GPUs that did not end as wanted, and how each was left
    (``rolled-back``: as before the run; ``rollback-failed``: what is left)."""
    lines = []
    for key in sorted(gpus, key=int):
        g = gpus[key]
        if g.get("status") in ("unchanged", "applied"):
            continue
        line = f"  - GPU {key}: {g.get('status')}"
        if g.get("error"):
            line += f": {g['error']}"
        if g.get("rollback_error"):
            line += f"; rollback: {g['rollback_error']}"
        lines.append(line)
    return lines
