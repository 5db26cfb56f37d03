"""``migmanagerd suggest``: the layout that serves a mix with the fewest GPUs and least waste.

Prints a v1 config (``--name``, default ``suggested``) that ``validate``,
``select`` and ``apply`` accept. Exit 0, 1 the mix cannot be served by these
GPUs, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import re

from migmanagerd.apply.configtext import config_json, render_config_file
from migmanagerd.catalog.load import load_catalog
from migmanagerd.catalog.model import GpuModel
from migmanagerd.cli.common import add_backend, add_debug
from migmanagerd.errors import UsageError
from migmanagerd.ondemand.suggest import parse_need, suggest, suggestion_config

_COUNTED = re.compile(r"^(\d+)x(.+)$")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "suggest",
        help="compute the MIG layout that serves a mix of needs with the fewest GPUs",
        description="Compute, exactly, the layout of this node's GPUs (or of --gpu models) that serves every "
        "--need with the fewest GPUs, then the least memory beyond what was asked, and print it as a v1 config. "
        "Exit 0, 1 the mix does not fit these GPUs, 2 bad input.",
    )
    p.add_argument("--need", action="append", default=[], metavar="NxSIZE",
                   help="N devices of SIZE: <n>GB (nominal, as in 2g.10gb), <n>MiB or a profile name; repeatable")
    p.add_argument("--gpu", action="append", default=[], metavar="MODEL",
                   help="lay out these GPU models instead of this node's GPUs (repeat, or NxMODEL)")
    p.add_argument("--name", default="suggested", help="config name (default: suggested)")
    p.add_argument("--json", action="store_true", help="the config as JSON (export --json's shape)")
    add_backend(p)
    add_debug(p)
    p.set_defaults(func=run)


def _models_from_args(texts: list[str]) -> list[tuple[int, GpuModel]]:
    catalog = load_catalog()
    out: list[tuple[int, GpuModel]] = []
    for text in texts:
        m = _COUNTED.match(text.strip())
        n, name = (int(m[1]), m[2]) if m and catalog.find(text) is None else (1, text)
        model = catalog.find(name)
        if model is None:
            raise UsageError(f"--gpu {text}: unknown GPU model (known: {', '.join(catalog.names)})")
        out.extend((len(out), model) for _ in range(n))
    return out


def _models_of_node(args: argparse.Namespace) -> list[tuple[int, GpuModel]]:
    from migmanagerd.apply.engine import ApplyEngine
    from migmanagerd.gpu.factory import open_backend

    engine = ApplyEngine(open_backend(getattr(args, "backend", None)))
    try:
        state = engine.observe()
    finally:
        engine.backend.close()
    return [(v.index, v.model) for v in state.gpus if v.model is not None]


def run(args: argparse.Namespace) -> int:
    needs = [parse_need(t) for t in args.need]
    gpus = _models_from_args(args.gpu) if args.gpu else _models_of_node(args)
    result = suggest(gpus, needs)
    config = suggestion_config(result, args.name)
    if args.json:
        print(json.dumps(config_json([config]), indent=2))
    else:
        print(render_config_file([config]), end="")
    return 0
