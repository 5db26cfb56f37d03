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
  on the simulated node, median of M runs (s), interpreter start included.

    .venv/bin/python benchmarks/bench_load.py [--repeat 20] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from migmanagerd.catalog import load as catalog_load
from migmanagerd.spec.config import load_config
try:
    from migmanagerd.spec.source import LOADER_NAME
except ImportError:
    LOADER_NAME = "SafeLoader (before)"

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
NODE = "8xA100-SXM4-40GB"


def best_ms(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def assert_seconds(runs: int) -> float:
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
        for _ in range(runs):
            t0 = time.perf_counter()
            proc = subprocess.run([*base, "assert", "-c", "all-balanced", "-f", str(CONFIG)], env=env,
                                  capture_output=True)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise SystemExit(f"assert failed: {proc.stderr.decode()}")
        return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    text = (Path(catalog_load.__file__).parent / catalog_load.DATA_FILE).read_text(encoding="utf-8")
    catalog_ms = best_ms(lambda: catalog_load.load_catalog.__wrapped__(), args.repeat)  # type: ignore[attr-defined]
    config_ms = best_ms(lambda: load_config(CONFIG), args.repeat)
    assert_s = assert_seconds(args.runs)
    print(f"loader: {LOADER_NAME} (libyaml in PyYAML {yaml.__version__}: {yaml.__with_libyaml__}); "
          f"catalog {len(text)} bytes, config {CONFIG.stat().st_size} bytes")
    print(f"{'step':<34} {'time':>10}")
    print("-" * 45)
    print(f"{'catalog parse+check (best)':<34} {catalog_ms:>7.1f} ms")
    print(f"{'config.yaml load+validate (best)':<34} {config_ms:>7.1f} ms")
    print(f"{f'assert on {NODE} (median)':<34} {assert_s:>8.3f} s")


if __name__ == "__main__":
    main()
