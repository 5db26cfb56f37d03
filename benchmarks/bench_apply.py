#!/usr/bin/env python3
"""Apply speed and operation counts on a simulated 8xA100-SXM4-40GB node.

For each transition, the node is first brought to the starting config with no
latency, then the target is applied with per-operation latencies set through
the simulator's knob (env MIGMANAGERD_SIM_LATENCY). Printed per transition:

* wall time of ``ApplyEngine.apply`` against the slowest GPU's summed
  operation latency (its own writes plus the one node-wide reset). GPUs are
  reconfigured in parallel, so the target is wall <= 1.15 x slowest GPU;
* backend writes against a clear-everything-and-recreate strategy (destroy
  every instance, create every wanted device). Target: never more, and fewer
  whenever the transition keeps an instance.

Latencies are ASSUMPTIONS, not measurements (no GPU was available, and no
published per-call figures were found): GI create 0.4 s, CI create 0.2 s,
CI destroy 0.1 s, GI destroy 0.2 s, MIG mode set 1.0 s, GPU reset 5.0 s.
``--scale`` multiplies them all (ratios are what the targets are about).

    .venv/bin/python benchmarks/bench_apply.py [--scale 1.0] [--gpus 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.apply.nodeplan import NodePlan
from migmanagerd.catalog.load import load_catalog
from migmanagerd.gpu.sim import SimBackend, init_node
from migmanagerd.gpu.sim_faults import LATENCY_ENV
from migmanagerd.spec.config import load_config

LATENCY = {
    "create_gi": 0.4,
    "create_ci": 0.2,
    "destroy_ci": 0.1,
    "destroy_gi": 0.2,
    "set_mode": 1.0,
    "reset": 5.0,
}
TRANSITIONS = [
    ("all-1g.5gb", "all-balanced"),
    ("all-balanced", "all-1g.5gb"),
    ("all-disabled", "all-3g.20gb"),
    ("all-balanced", "all-3g.20gb"),
]
WALL_TARGET = 1.15
# the shipped config: its all-* configs are what a node applies
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
# The simulator saves its state with fsync under a node-wide lock after every
# write; on tmpfs that costs microseconds, on a disk milliseconds that would be
# charged to the engine. Real GPUs have no such shared lock.
STATE_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None


def clear_and_recreate_ops(engine: ApplyEngine, plan: NodePlan) -> int:
    """Writes a strategy that empties every selected GPU and builds the target from scratch needs."""
    total = 0
    for entry in plan.gpus:
        if not entry.selected:
            continue
        current = entry.current_devices
        wanted = sum(n for _, n in entry.target_devices) if entry.mode_target else 0
        mode_ops = 0
        if entry.needs_mode_change:
            mode_ops = 1 + (1 if entry.mode_target != entry.mode_current else 0)
        # every device: CI + GI to destroy, GI + CI to create
        cur = len(current) if entry.mode_current else 0
        if entry.mode_target and entry.mode_target != entry.mode_current:
            cur_destroy = 0  # the activating reset clears the GPU anyway
        else:
            cur_destroy = cur
        total += 2 * cur_destroy + 2 * wanted + mode_ops
    return total


def run(scale: float, gpus: int, config_path: Path) -> list[dict[str, Any]]:
    catalog = load_catalog()
    configs = load_config(config_path).configs
    rows = []
    latency = {k: v * scale for k, v in LATENCY.items()}
    for start, target in TRANSITIONS:
        with tempfile.TemporaryDirectory(dir=STATE_DIR) as tmp:
            os.environ.pop(LATENCY_ENV, None)
            state = Path(tmp) / "node.json"
            init_node(state, f"{gpus}xA100-SXM4-40GB", catalog=catalog)
            backend = SimBackend(state, catalog=catalog)
            engine = ApplyEngine(backend, catalog=catalog)
            engine.apply(configs[start])
            plan = engine.plan(configs[target])
            baseline = clear_and_recreate_ops(engine, plan)
            os.environ[LATENCY_ENV] = ",".join(f"{k}={v}" for k, v in latency.items())
            try:
                t0 = time.monotonic()
                report = engine.apply(configs[target])
                wall = time.monotonic() - t0
            finally:
                os.environ.pop(LATENCY_ENV, None)
            if report.exit_code != 0:
                raise SystemExit(f"{start} -> {target}: apply failed: {report.summary()}")
            per_gpu = [sum(latency[k] * n for k, n in r.operations.items()) for r in report.gpus]
            slowest = max(per_gpu) if per_gpu else 0.0
            ours = sum(r.op_count for r in report.gpus)
            kept = sum(len(r.kept_uuids) for r in report.gpus)
            rows.append(
                {
                    "transition": f"{start} -> {target}",
                    "wall": wall,
                    "slowest": slowest,
                    "ratio": wall / slowest if slowest else 0.0,
                    "ops": ours,
                    "baseline": baseline,
                    "kept": kept,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every latency (default 1.0)")
    ap.add_argument("--gpus", type=int, default=8, help="A100-SXM4-40GB GPUs in the node (default 8)")
    ap.add_argument("--config", type=Path, default=SHIPPED_CONFIG, help="config file with the all-* configs")
    args = ap.parse_args(argv)
    rows = run(args.scale, args.gpus, args.config)
    lat = ", ".join(f"{k}={v * args.scale:g}s" for k, v in LATENCY.items())
    print(f"node: {args.gpus}xA100-SXM4-40GB (simulated); latencies (assumed): {lat}")
    head = f"{'transition':34} {'wall s':>7} {'slowest GPU s':>13} {'ratio':>6} {'ops':>5} {'clear+recreate':>14} {'kept':>5}"
    print(head)
    print("-" * len(head))
    ok = True
    for r in rows:
        ratio_ok = r["ratio"] <= WALL_TARGET
        ops_ok = r["ops"] <= r["baseline"] and (r["kept"] == 0 or r["ops"] < r["baseline"])
        ok &= ratio_ok and ops_ok
        print(
            f"{r['transition']:34} {r['wall']:7.2f} {r['slowest']:13.2f} {r['ratio']:6.3f}"
            f"{'' if ratio_ok else '!'} {r['ops']:5d} {r['baseline']:14d} {r['kept']:5d}{'' if ops_ok else ' !'}"
        )
    print(f"targets: ratio <= {WALL_TARGET}; ops <= clear+recreate, and fewer when an instance is kept: "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
