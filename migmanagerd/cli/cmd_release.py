"""``migmanagerd release --owner ID``: free the MIG devices leased to ID.

The devices stay as they are (free, for the next request); only the leases go.
Exit 0 (also when ID held nothing), 2 bad input.
"""

from __future__ import annotations

import argparse
import json

from migmanagerd.cli.common import add_debug
from migmanagerd.errors import UsageError
from migmanagerd.ondemand.serve import release_owner
from migmanagerd.service.paths import NodePaths


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "release",
        help="free the MIG devices leased to an owner",
        description="Drop every lease of --owner (a job id, or pid:N). The MIG devices stay, free for the next "
        "request. Exit 0, 2 bad input.",
    )
    p.add_argument("--owner", required=True, metavar="ID", help="the owner given to request (or pid:N)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.owner.strip():
        raise UsageError("--owner: must not be empty")
    gone = release_owner(NodePaths.from_env(), args.owner)
    if args.json:
        print(json.dumps({"owner": args.owner, "released": [{"uuid": x.uuid, "gpu": x.gpu, "profile": x.profile} for x in gone]}, indent=2))
        return 0
    if not gone:
        print(f"no lease held by {args.owner}")
    for lease in gone:
        print(f"released GPU {lease.gpu} {lease.profile} {lease.uuid}")
    return 0
