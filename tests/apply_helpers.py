"""Shared set-up for the apply-engine tests: simulated nodes and views of them."""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path

from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.gpu.sim import SimBackend, init_node
from migmanagerd.gpu.sim_faults import PROCESS_FAULTS

# the shipped config.yaml: all-disabled, all-enabled, all-balanced and an all-<profile>
# config per profile, with device filters per model
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"

# configs without device filters, refused where a selected GPU lacks the profile
UNFILTERED_CONFIG = Path(__file__).resolve().parent / "data" / "unfiltered.yaml"

A100_NODE = "8xA100-SXM4-40GB"
MIXED_NODE = "2xA100-SXM4-40GB,2xA30-24GB,2xH100-80GB"


@cache
def catalog():
    from migmanagerd.catalog.load import load_catalog

    return load_catalog()


@cache
def default_configs():
    from migmanagerd.spec.config import load_config

    return load_config(DEFAULT_CONFIG)


@cache
def unfiltered_configs():
    from migmanagerd.spec.config import load_config

    return load_config(UNFILTERED_CONFIG)


def sim_node(tmp_path: Path, spec: str, *, name: str = "node.json", **kw) -> SimBackend:
    path = tmp_path / name
    init_node(path, spec, catalog=catalog(), **kw)
    PROCESS_FAULTS.reset()
    return SimBackend(path, catalog=catalog())


def engine(backend, notify=None) -> ApplyEngine:
    return ApplyEngine(backend, catalog=catalog(), notify=notify)


def ops(backend: SimBackend) -> dict[str, int]:
    return {k: v for k, v in backend.snapshot().ops.items() if v}


def layout(backend: SimBackend) -> dict[int, tuple]:
    """Per GPU: (current mode, pending mode, sorted (profile, start, size, uuid))."""
    eng = engine(backend)
    out = {}
    for view in eng.observe().gpus:
        # a GPU instance with several compute instances: their UUIDs joined
        devs = tuple(sorted((d.profile, d.placement.start, d.placement.size, ",".join(d.uuids)) for d in view.devices))
        out[view.index] = (view.mode.current, view.mode.pending, devs)
    return out


def shape(entry: tuple) -> tuple:
    """A layout without UUIDs (what a rollback can restore)."""
    cur, pend, devs = entry
    return cur, pend, tuple(d[:3] for d in devs)


def multiset(entry: tuple) -> Counter:
    return Counter(d[0] for d in entry[2])
