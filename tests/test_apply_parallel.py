"""GPUs are reconfigured at the same time, one worker per GPU.

Proved by recording when each backend write starts and ends (the simulator
sleeps its per-operation latency outside its lock, as hardware calls on
different GPUs proceed independently): writes on different GPUs overlap.
No wall-clock threshold is asserted.
"""

from __future__ import annotations

import itertools
import threading
import time

from apply_helpers import default_configs, engine, sim_node

from migmanagerd.gpu.sim_faults import LATENCY_ENV

WRITES = ("set_mig_mode", "create_gpu_instance", "create_compute_instance",
          "destroy_compute_instance", "destroy_gpu_instance")


class Recording:
    """Wraps a backend; records (gpu, op, start, end) of each write."""

    def __init__(self, inner):
        self._inner = inner
        self.name = inner.name
        self.calls: list[tuple[int, str, float, float]] = []
        self._lock = threading.Lock()

    def __getattr__(self, attr):
        target = getattr(self._inner, attr)
        if attr not in WRITES:
            return target

        def wrapped(index, *args):
            t0 = time.monotonic()
            try:
                return target(index, *args)
            finally:
                with self._lock:
                    self.calls.append((index, attr, t0, time.monotonic()))

        return wrapped


def _overlapping_pairs(calls):
    pairs = set()
    for a in calls:
        for b in calls:
            if a[0] < b[0] and a[2] < b[3] and b[2] < a[3]:
                pairs.add((a[0], b[0]))
    return pairs


def test_writes_on_different_gpus_overlap(tmp_path, monkeypatch):
    backend = sim_node(tmp_path, "4xA100-SXM4-40GB")
    monkeypatch.setenv(LATENCY_ENV, "create_gi=0.03,create_ci=0.01,destroy_gi=0.01,destroy_ci=0.01,set_mode=0.02")
    rec = Recording(backend)
    eng = engine(rec)
    assert eng.apply(default_configs().configs["all-1g.5gb"]).exit_code == 0
    gpus = {c[0] for c in rec.calls}
    assert gpus == {0, 1, 2, 3}
    pairs = _overlapping_pairs(rec.calls)
    # every GPU overlapped with at least one other GPU
    assert {g for p in pairs for g in p} == {0, 1, 2, 3}


def test_one_gpu_writes_in_order(tmp_path):
    """Within one GPU the steps stay sequential: CIs before their GI, GI before its CI."""
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    rec = Recording(backend)
    eng = engine(rec)
    eng.apply(default_configs().configs["all-balanced"])
    eng.apply(default_configs().configs["all-1g.5gb"])
    for gpu in (0, 1):
        mine = sorted((c for c in rec.calls if c[0] == gpu), key=lambda c: c[2])
        for a, b in itertools.pairwise(mine):
            assert a[3] <= b[2], f"GPU {gpu}: {a[1]} and {b[1]} overlapped"


def test_worker_count_is_bounded(tmp_path):
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    eng = engine(backend)
    assert eng.max_workers == 16
    from migmanagerd.apply.engine import ApplyEngine

    assert ApplyEngine(backend, catalog=eng.catalog, max_workers=64).max_workers == 16
