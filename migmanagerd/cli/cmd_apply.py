"""``migmanagerd apply``: converge the node to a config by hand.

The same run as the boot-time service (hooks, GPU clients, journal, run lock,
state.json), so an `apply` from Ansible is as safe as a boot. With
``-c NAME`` a successful apply also makes NAME the boot-time selection.
"""

from __future__ import annotations

import argparse
import json

from migmanagerd.cli.cmd_service import add_run_options, options_from_args
from migmanagerd.service.run import ServiceRun
from migmanagerd.spec.config import STDIN_PATH


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "apply",
        help="apply the selected MIG config to this node (hooks and GPU clients included)",
        description="Apply the selected MIG config: if the node differs, run the hooks, stop the GPU clients "
        "listed in clients.yaml, switch MIG mode where needed (GPU reset), create and destroy only the MIG "
        "devices that differ, restart the clients. With -c NAME, a successful apply makes NAME the config "
        "every boot applies. Exit 0 applied, 1 failed (per-GPU result printed), 2 bad config or the config "
        "does not fit (nothing changed).",
    )
    add_run_options(p)
    p.add_argument("--json", action="store_true", help="print the run's result and per-GPU results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # `nvidia-mig-parted apply` (cli/peer.py) sets persist_selection False:
    # the peer's apply never changes what the next boot applies
    persist = getattr(args, "persist_selection", None)
    if persist is None:
        # a config read from standard input cannot be read again at boot
        persist = args.selected_config is not None and args.config_file != STDIN_PATH
    service = ServiceRun(options_from_args(args, persist_selection=persist))
    outcome = service.run()
    results = service.gpu_results()
    if args.json:
        doc = {
            "config": service.config_name,
            "exit_code": outcome.exit_code,
            "result": outcome.result,
            "message": outcome.message,
            "gpus": [r.to_json() for r in results],
        }
        print(json.dumps(doc, indent=2))
        return outcome.exit_code
    for result in results:
        if result.status != "unchanged" or result.error:
            print(result.describe())
    if outcome.exit_code == 0:
        print(outcome.message)
    return outcome.exit_code
