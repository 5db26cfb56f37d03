#!/usr/bin/env python3
"""MIG on demand: request latency and ``suggest`` time.

* ``request`` on a simulated 8xA100-SXM4-40GB node, MIG on, in-process
  (``OnDemand.request``: run lock, lease file, observation, selection):
  - *reuse*: a free instance fits, no layout change (median of 10);
  - *relayout*: one empty GPU must be laid out (median of 3, a fresh GPU
    each time), with the simulator's per-operation latencies set to the same
    ASSUMED figures as bench_apply.py (no GPU was available): GI create 0.4 s,
    CI create 0.2 s, CI destroy 0.1 s, GI destroy 0.2 s. Printed next to the
    summed latency of the operations it made: the overhead is the rest.
* ``suggest`` for an 8-GPU node and a 20-item mix (best of 3, cold caches):
  8xA100-SXM4-40GB, and 4xA100-SXM4-40GB + 4xH100-80GB.

    .venv/bin/python benchmarks/bench_ondemand.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.catalog.load import load_catalog
from migmanagerd.gpu.sim import SimBackend, init_node
from migmanagerd.gpu.sim_faults import LATENCY_ENV
from migmanagerd.ondemand import suggest as suggest_mod
from migmanagerd.ondemand.geometries import AllowedGeometries, catalog_geometries
from migmanagerd.ondemand.leases import leases_path
from migmanagerd.ondemand.request import Request
from migmanagerd.ondemand.serve import OnDemand, release_owner
from migmanagerd.service.paths import NodePaths

LATENCY = {"create_gi": 0.4, "create_ci": 0.2, "destroy_ci": 0.1, "destroy_gi": 0.2}
MIX = ["6x5GB", "5x10GB", "4x20GB", "3x40GB", "2x3g.20gb"]  # 20 items


def _node(tmp: Path) -> tuple[OnDemand, SimBackend, NodePaths]:
    state = tmp / "node.json"
    catalog = load_catalog()
    init_node(state, "8xA100-SXM4-40GB", catalog=catalog)
    backend = SimBackend(state, catalog=catalog)
    for i in range(8):  # MIG on, no instances (the simulator's reset activates the mode)
        backend.set_mig_mode(i, True)
    backend.reset(list(range(8)))
    paths = NodePaths.under_root(tmp / "root")
    return OnDemand(ApplyEngine(backend, catalog), paths, AllowedGeometries("catalog")), backend, paths


def bench_requests() -> None:
    with tempfile.TemporaryDirectory() as d:
        od, backend, paths = _node(Path(d))
        od.request(Request(7, profile="1g.5gb"), "setup", None)  # GPU 0: 1g.5gb x7
        release_owner(paths, "setup")
        reuse = []
        for _ in range(10):
            t = time.perf_counter()
            served = od.request(Request(1, 4000), "bench", None)
            reuse.append(time.perf_counter() - t)
            assert not served.selection.changes
            release_owner(paths, "bench")
        os.environ[LATENCY_ENV] = ",".join(f"{k}={v}" for k, v in LATENCY.items())
        relayout, floor = [], []
        try:
            for n in range(3):
                before = dict(backend.snapshot().ops)
                t = time.perf_counter()
                served = od.request(Request(1, 16000), f"bench{n}", None)
                relayout.append(time.perf_counter() - t)
                assert len(served.selection.changes) == 1
                ops = {k: v - before.get(k, 0) for k, v in backend.snapshot().ops.items()}
                floor.append(sum(LATENCY.get(k, 0.0) * v for k, v in ops.items()))
        finally:
            os.environ.pop(LATENCY_ENV, None)
        leases_path(paths.state_dir).unlink(missing_ok=True)
    print("node: 8xA100-SXM4-40GB (simulated), catalog geometries; latencies (assumed): "
          + ", ".join(f"{k}={v}s" for k, v in LATENCY.items()))
    print(f"{'request':<36}{'median s':>10}{'ops latency s':>15}{'overhead s':>12}")
    print("-" * 73)
    print(f"{'1 x 4000 MiB, a free 1g.5gb exists':<36}{statistics.median(reuse):>10.4f}{0:>15.2f}{statistics.median(reuse):>12.4f}")
    med, fl = statistics.median(relayout), statistics.median(floor)
    print(f"{'1 x 16000 MiB, one GPU re-laid out':<36}{med:>10.3f}{fl:>15.2f}{med - fl:>12.3f}")


def bench_suggest() -> None:
    catalog = load_catalog()
    a100, h100 = catalog.get("A100-SXM4-40GB"), catalog.get("H100-80GB")
    assert a100 is not None and h100 is not None
    needs = [suggest_mod.parse_need(t) for t in MIX]
    print()
    print(f"suggest, mix {' + '.join(MIX)} ({sum(n for n, _ in needs)} items)")
    print(f"{'node':<32}{'best of 3 s':>12}{'GPUs':>6}{'waste MiB':>11}")
    print("-" * 61)
    for label, models in (("8xA100-SXM4-40GB", [a100] * 8), ("4xA100-SXM4-40GB + 4xH100-80GB", [a100] * 4 + [h100] * 4)):
        times = []
        for _ in range(3):
            suggest_mod._multisets.cache_clear()
            catalog_geometries.cache_clear()
            t = time.perf_counter()
            result = suggest_mod.suggest(list(enumerate(models)), needs)
            times.append(time.perf_counter() - t)
        print(f"{label:<32}{min(times):>12.3f}{result.gpus_used:>6}{result.waste_mib:>11}")


if __name__ == "__main__":
    bench_requests()
    bench_suggest()
    sys.exit(0)
