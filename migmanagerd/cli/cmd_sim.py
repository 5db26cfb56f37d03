"""``migmanagerd sim``: make, inspect and poke a simulated node.

The state file comes from ``--state`` or env ``MIGMANAGERD_SIM_STATE``; the
other commands (``apply``, ``service``…) find it through the same variable
when run with ``--backend sim``.
"""

from __future__ import annotations

import argparse
import json
import sys

from migmanagerd.cli.common import add_debug
from migmanagerd.errors import UsageError
from migmanagerd.gpu import sim
from migmanagerd.gpu.backend import BackendError
from migmanagerd.gpu.sim_faults import parse_latency


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sim", help="simulated node: init, reboot, show, attach/detach processes")
    add_debug(p)
    p.add_argument("--state", default=None, help=f"state file (env {sim.STATE_ENV})")
    p.set_defaults(func=lambda a: (p.print_usage(sys.stderr), 2)[1])
    sub = p.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", parser_class=type(p))

    def sub_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text)
        add_debug(sp)
        sp.add_argument("--state", default=argparse.SUPPRESS, help=f"state file (env {sim.STATE_ENV})")
        return sp

    init = sub_parser("init", "create the simulated node")
    init.add_argument("--node", required=True, metavar="SPEC", help="e.g. 8xA100-SXM4-40GB, 4xH100-80GB,2xA30-24GB, 1x0x1FB010DE")
    init.add_argument("--latency", default="", metavar="OP=S,…", help="seconds per operation, e.g. create_gi=0.2,reset=2")
    init.add_argument("--no-reset", action="store_true", help="GPU reset unavailable (a passthrough VM): mode changes need a reboot")
    init.add_argument("--force", action="store_true", help="replace an existing state file")
    init.set_defaults(func=run_init)

    reboot = sub_parser("reboot", "simulate a node reboot")
    reboot.set_defaults(func=run_reboot)

    show = sub_parser("show", "print the node")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=run_show)

    for name, help_text in (
        ("attach", "record that a process holds a GPU (blocks mode changes and resets while it lives)"),
        ("detach", "forget a process recorded on a GPU"),
    ):
        sp = sub_parser(name, help_text)
        sp.add_argument("--gpu", type=int, required=name == "detach", metavar="N", help="GPU index")
        sp.add_argument("--pid", type=int, required=True, metavar="P", help="process id")
        if name == "attach":
            sp.add_argument(
                "--device", metavar="MIG-UUID", default=None,
                help="attach to this MIG device (its GPU is found from the UUID); it then counts as busy",
            )
        sp.set_defaults(func=run_attach if name == "attach" else run_detach)


def _path(args: argparse.Namespace):
    return sim.state_path_from_env(getattr(args, "state", None))


def run_init(args: argparse.Namespace) -> int:
    latency = parse_latency(args.latency, "--latency") if args.latency else {}
    node = sim.init_node(_path(args), args.node, latency=latency, no_reset=args.no_reset, force=args.force)
    print(f"simulated node {node.node}: {len(node.gpus)} GPU(s) in {_path(args)}")
    return 0


def run_reboot(args: argparse.Namespace) -> int:
    sim.reboot(_path(args))
    print("simulated node rebooted")
    return 0


def _backend(args: argparse.Namespace) -> sim.SimBackend:
    path = _path(args)
    if not path.exists():
        raise UsageError(f"simulated node state {path} does not exist; run 'migmanagerd sim init --node SPEC'")
    return sim.SimBackend(path)


def format_table(view: dict) -> str:
    rows = [("GPU", "MODEL", "MIG", "INSTANCES")]
    for g in view["gpus"]:
        if g["model"] is None:
            mode = "n/a"
        else:
            cur = "on" if g["mig_enabled"] else "off"
            mode = cur if g["mig_enabled"] == g["mig_pending"] else f"{cur} (pending {'on' if g['mig_pending'] else 'off'})"
        inst = " ".join(f"{i['profile']}@{i['start']}" for i in g["instances"]) or "-"
        if g["processes"]:
            inst += f"  [pids {' '.join(map(str, g['processes']))}]"
        for mp in g.get("mig_processes", []):
            inst += f"  [pid {mp['pid']} on {mp['uuid']}]"
        rows.append((str(g["index"]), g["model"] or f"{g['device_id']} (no MIG)", mode, inst))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    ops = " ".join(f"{k}={v}" for k, v in view["ops"].items())
    return "\n".join(lines + [f"node {view['node']}; operations: {ops}"])


def run_show(args: argparse.Namespace) -> int:
    view = sim.describe(_backend(args).snapshot())
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print(format_table(view))
    return 0


def _gpu_arg(backend: sim.SimBackend, index: int) -> None:
    n = len(backend.snapshot().gpus)
    if not 0 <= index < n:
        raise UsageError(f"--gpu {index}: this simulated node has GPUs 0..{n - 1}")


def run_attach(args: argparse.Namespace) -> int:
    b = _backend(args)
    if args.device:
        index = b.attach_device(args.device, args.pid)
        if args.gpu is not None and args.gpu != index:
            raise UsageError(f"--device {args.device} is on GPU {index}, not on --gpu {args.gpu}")
        return 0
    if args.gpu is None:
        raise UsageError("attach needs --gpu N or --device MIG-UUID")
    _gpu_arg(b, args.gpu)
    b.attach(args.gpu, args.pid)
    return 0


def run_detach(args: argparse.Namespace) -> int:
    b = _backend(args)
    _gpu_arg(b, args.gpu)
    try:
        b.detach(args.gpu, args.pid)
    except BackendError as exc:
        raise UsageError(str(exc)) from None
    return 0
