"""Shared set-up for the apply-engine tests: simulated nodes and views of them.

Suites run with both GPU backends (the ``both_backends`` fixture in
conftest.py sets ``BACKEND``): ``sim_node`` then answers a ``SimBackend`` or
an ``NvmlOverSim``: the real ``NvmlBackend`` through unmodified nvidia-ml-py
and the NVML stand-in, served by the same simulated node. ``use_backend_env``
does the same for CLI runs (env ``MIGMANAGERD_BACKEND`` and the stand-in's).
"""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.gpu import nvml_standin
from migmanagerd.gpu.nvml import NvmlBackend
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


BACKEND = ["sim"]  # the backend kind sim_node hands out ("sim" or "nvml")
_OPEN: list[NvmlBackend] = []


class NvmlOverSim(NvmlBackend):
    """The real NVML backend over the stand-in on a simulated node; what only
    the simulator has (``snapshot``, ``attach``, ``state_path``…) comes from
    a ``SimBackend`` on the same state file, for the tests' own assertions."""

    def __init__(self, path: Path, **standin: Any) -> None:
        self.sim = SimBackend(path, catalog=catalog())
        self.state_path = self.sim.state_path
        self.lib = nvml_standin.StandinLibrary(path, catalog=catalog(), **standin)
        bindings = nvml_standin.install(self.lib, nvml_standin.load_bindings())
        super().__init__(
            nvml=bindings,
            nvidia_smi=nvml_standin.nvidia_smi_argv(self.lib),
            sysfs_root=nvml_standin.sysfs_root(self.lib),
        )
        _OPEN.append(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sim, name)


def sim_node(tmp_path: Path, spec: str, *, name: str = "node.json", backend: str | None = None, **kw) -> Any:
    path = tmp_path / name
    init_node(path, spec, catalog=catalog(), **kw)
    PROCESS_FAULTS.reset()
    if (backend or BACKEND[0]) == "nvml":
        return NvmlOverSim(path)
    return SimBackend(path, catalog=catalog())


def backend_env(kind: str | None = None) -> dict[str, str]:
    """Environment for a migmanagerd process on the simulated node with the current backend."""
    kind = kind or BACKEND[0]
    return {"MIGMANAGERD_BACKEND": kind, nvml_standin.STANDIN_ENV: "sim" if kind == "nvml" else ""}


def use_backend_env(monkeypatch, kind: str | None = None) -> None:
    """The same, for a CLI run in this process."""
    for name, value in backend_env(kind).items():
        monkeypatch.setenv(name, value)


def nvml_clients_dir(backend: Any) -> Path:
    """Where the NVML stand-in records its sessions on this node (made on first use)."""
    return nvml_standin.ClientRegistry(Path(backend.state_path)).dir


def close_backends() -> None:
    """After a test: close the NVML backends it opened, unhook pynvml."""
    while _OPEN:
        _OPEN.pop().close()
    nvml_standin.uninstall()


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
