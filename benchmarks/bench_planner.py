#!/usr/bin/env python3
"""Planner speed: plan every GI-profile multiset of every catalog model.

For each model, every multiset bounded by the profiles' max counts (full
compute instances) is planned from an empty GPU and from a few non-empty
starting layouts (seeded, so runs are comparable). Prints plans per second
and the slowest single plan per model. Target: slowest plan under 5 ms.

    .venv/bin/python benchmarks/bench_planner.py [--layouts N] [--model NAME]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import sys
import time
from typing import Any

from migmanagerd.catalog.load import load_catalog
from migmanagerd.catalog.model import GpuModel
from migmanagerd.planner.placement import plan_gpu
from migmanagerd.planner.types import GpuPlan, MigDevice
from migmanagerd.spec.profile import MigProfile

TARGET_MS = 5.0
RETIME = 50  # slowest samples re-timed per model
REPEAT = 5


def multisets(model: GpuModel) -> list[list[tuple[MigProfile, int]]]:
    profiles = [(MigProfile.parse(p.name), p.max_count) for p in model.gi_profiles]
    out = []
    for counts in itertools.product(*(range(mx + 1) for _, mx in profiles)):
        out.append([(p, k) for (p, _), k in zip(profiles, counts, strict=True) if k])
    return out


def start_layouts(
    model: GpuModel, targets: list[list[tuple[MigProfile, int]]], n: int, seed: str,
) -> list[list[MigDevice]]:
    """``n`` distinct non-empty layouts, made by planning random feasible targets."""
    rng = random.Random(seed)
    layouts: dict[tuple[MigDevice, ...], list[MigDevice]] = {}
    shuffled = list(targets)
    rng.shuffle(shuffled)
    for t in shuffled:
        plan = plan_gpu(model, [], t)
        if isinstance(plan, GpuPlan) and plan.create:
            devs = [MigDevice(d.placement, d.profile, uuid=f"MIG-{i}") for i, d in enumerate(plan.create)]
            layouts.setdefault(tuple(devs), devs)
        if len(layouts) >= n:
            break
    return list(layouts.values())


def bench_model(model: GpuModel, n_layouts: int) -> dict[str, Any]:
    targets = multisets(model)
    starts: list[list[MigDevice]] = [[]] + start_layouts(model, targets, n_layouts, f"bench-{model.name}")
    gc.collect()
    gc.disable()  # measure the planner, not the collector's pauses
    try:
        times = []
        feasible = 0
        for current in starts:
            for t in targets:
                t0 = time.perf_counter()
                result = plan_gpu(model, current, t)
                times.append((time.perf_counter() - t0, current, t))
                feasible += isinstance(result, GpuPlan)
        # A single sample's maximum mostly measures the OS preempting us (this runs
        # on a shared 2-core machine), so re-time the slowest inputs and keep the
        # best of several runs: the cost of the slowest plan itself.
        times.sort(key=lambda x: x[0])
        slowest = 0.0
        for _, current, t in times[-RETIME:]:
            best = float("inf")
            for _ in range(REPEAT):
                t0 = time.perf_counter()
                plan_gpu(model, current, t)
                best = min(best, time.perf_counter() - t0)
            slowest = max(slowest, best)
    finally:
        gc.enable()
    total = sum(x[0] for x in times)
    return {
        "model": model.name,
        "multisets": len(targets),
        "starts": len(starts),
        "plans": len(times),
        "feasible": feasible,
        "per_s": len(times) / total if total else float("inf"),
        "p99_ms": times[int(len(times) * 0.99)][0] * 1e3,
        "raw_max_ms": times[-1][0] * 1e3,
        "max_ms": slowest * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", type=int, default=5, help="non-empty starting layouts per model (default 5)")
    ap.add_argument("--model", action="append", default=[], help="only this catalog model (repeatable)")
    args = ap.parse_args(argv)
    catalog = load_catalog()
    models = [m for m in catalog.models if not args.model or m.name in args.model]
    header = f"{'model':<24} {'multisets':>9} {'starts':>6} {'plans':>8} {'feasible':>8} {'plans/s':>9} {'p99 ms':>7} {'max ms':>7} {'raw max':>8}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for m in models:
        r = bench_model(m, args.layouts)
        worst = max(worst, r["max_ms"])
        print(
            f"{r['model']:<24} {r['multisets']:>9} {r['starts']:>6} {r['plans']:>8} {r['feasible']:>8} "
            f"{r['per_s']:>9.0f} {r['p99_ms']:>7.3f} {r['max_ms']:>7.3f} {r['raw_max_ms']:>8.3f}"
        )
    verdict = "OK" if worst < TARGET_MS else "OVER TARGET"
    print(f"\nslowest single plan: {worst:.3f} ms (target < {TARGET_MS} ms): {verdict}")
    print(f"max ms = slowest of the {RETIME} slowest inputs re-timed (best of {REPEAT}); raw max = one sample, incl. preemption")
    return 0


if __name__ == "__main__":
    sys.exit(main())
