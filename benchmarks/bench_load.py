#!/usr/bin/env python3
"""Input loading cost: the GPU catalog and the shipped config.yaml, and a whole
``assert`` on a simulated 8xA100-SXM4-40GB node.

Every command reads the catalog (package data) and config.yaml before it
plans anything, so parsing them is a fixed cost of `assert`, `plan`, `status`
and the boot-time run. Printed:

* ``catalog``: parsing and checking models.yaml (best of N, ms);
* ``config``: reading and validating config/config.yaml into a ConfigFile
  (best of N, ms);
* ``assert``: ``python -m migmanagerd assert -c all-balanced`` as a process
  on the simulated node, interpreter start included: best and median wall
  time of M runs, and the median CPU time (user+system) of the process, which
  other jobs on a shared machine disturb far less than wall time.

    .venv/bin/python benchmarks/bench_load.py [--repeat 20] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from migmanagerd.catalog import load as catalog_load
from migmanagerd.spec.config import load_config
from migmanagerd.spec.source import LOADER_NAME

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
NODE = "8xA100-SXM4-40GB"


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def assert_seconds(runs: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "MIGMANAGERD_BACKEND": "sim",
            "MIGMANAGERD_SIM_STATE": str(Path(tmp) / "sim.json"),
            "MIGMANAGERD_SIM_NODE": NODE,
            "MIGMANAGERD_ROOT": tmp,
        }
        base = [sys.executable, "-m", "migmanagerd"]
        subprocess.run([*base, "apply", "-c", "all-balanced", "-f", str(CONFIG)], env=env, check=True,
                       capture_output=True)
        times = []
        cpu = []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run([*base, "assert", "-c", "all-balanced", "-f", str(CONFIG)], env=env,
                                  capture_output=True)
            times.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if proc.returncode != 0:
                raise SystemExit(f"assert failed: {proc.stderr.decode()}")
        return min(times), statistics.median(times), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    text = (Path(catalog_load.__file__).parent / catalog_load.DATA_FILE).read_text(encoding="utf-8")
    # __wrapped__: past lru_cache, so every repeat parses again
    catalog_ms = best_ms(lambda: catalog_load.load_catalog.__wrapped__(), args.repeat)
    config_ms = best_ms(lambda: load_config(CONFIG), args.repeat)
    best_s, median_s, cpu_s = assert_seconds(args.runs)
    print(f"loader: {LOADER_NAME} (libyaml in PyYAML {yaml.__version__}: {yaml.__with_libyaml__}); "
          f"catalog {len(text)} bytes, config {CONFIG.stat().st_size} bytes")
    print(f"{'step':<40} {'time':>10}")
    print("-" * 51)
    print(f"{'catalog parse+check (best)':<40} {catalog_ms:>7.1f} ms")
    print(f"{'config.yaml load+validate (best)':<40} {config_ms:>7.1f} ms")
    print(f"{f'assert on {NODE}, wall (best)':<40} {best_s:>8.3f} s")
    print(f"{f'assert on {NODE}, wall (median)':<40} {median_s:>8.3f} s")
    print(f"{f'assert on {NODE}, CPU (median)':<40} {cpu_s:>8.3f} s")


if __name__ == "__main__":
    main()
