"""``migmanagerd journal``: see, and clear, the record of a run in flight.

Every client a run stops is recorded in state.json's journal before it is
stopped, so a run that is killed leaves the next run a list of units to start
again. A journal whose run is gone is *stale*; the next run (the next boot)
acts on it. ``journal clear`` forgets it instead, for when the operator has
dealt with those units by hand.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from migmanagerd.cli.common import add_debug
from migmanagerd.errors import MigManagerError
from migmanagerd.service.paths import NodePaths


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "journal",
        help="show or clear the journal of a run in flight (the GPU clients it left stopped)",
        description="Show the in-flight journal in state.json and whether its run is still live, or "
        "clear a stale one. The next run restarts the units a stale journal lists; clear it only "
        "when you do not want that.",
    )
    add_debug(p)
    sub = p.add_subparsers(dest="journal_command", metavar="JOURNAL_COMMAND")
    show = sub.add_parser("show", help="print the journal and whether its run is live (default)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    add_debug(show)
    clear = sub.add_parser("clear", help="forget a stale journal (refused while its run is live)")
    add_debug(clear)
    show.set_defaults(func=run_show)
    clear.set_defaults(func=run_clear)
    p.set_defaults(func=run_show, json=False)


def describe(paths: NodePaths | None = None) -> dict[str, Any]:
    """{"journal": <state.json's journal or None>, "live": bool}"""
    from migmanagerd.service.run_liveness import journal_is_live
    from migmanagerd.service.state import StateStore, state_to_json

    paths = paths or NodePaths.from_env()
    state = StateStore(paths).load().state
    doc = json.loads(state_to_json(state))["journal"]
    live = state.journal is not None and journal_is_live(state.journal, paths.read_boot_id())
    return {"journal": doc, "live": live}


def run_show(args: argparse.Namespace) -> int:
    doc = describe()
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=2))
        return 0
    j = doc["journal"]
    if j is None:
        print("no run in flight; no journal")
        return 0
    what = "in flight" if doc["live"] else "stale (its run is gone; the next run restarts the units below)"
    print(f"run pid {j['pid']} config '{j['config']}' phase '{j['phase']}' since {j['started_at']}: {what}")
    print(f"stopped units: {', '.join(j['stopped_units']) or '-'}")
    if not doc["live"]:
        print("to forget it instead: migmanagerd journal clear")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from migmanagerd.service.state import StateStore

    paths = NodePaths.from_env()
    doc = describe(paths)
    j = doc["journal"]
    if j is None:
        print("no journal to clear")
        return 0
    if doc["live"]:
        raise MigManagerError(f"run pid {j['pid']} is still running (phase '{j['phase']}'); not clearing its journal")
    StateStore(paths).end_journal()
    units = ", ".join(j["stopped_units"]) or "none"
    print(f"cleared the journal of run pid {j['pid']}; units it had stopped, not started by migmanagerd: {units}")
    return 0
