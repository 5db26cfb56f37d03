"""A stand-in for the NVML C library, under the real nvidia-ml-py, served by
the simulated node (docs/nvml-standin.md).

``install(state_path)`` makes ``pynvml`` talk to a ``StandinLibrary`` instead
of ``libnvidia-ml.so.1``; ``NvmlBackend`` then runs unmodified against the
same simulated node the ``sim`` backend uses. ``open_backend`` does this when
``MIGMANAGERD_NVML_STANDIN=sim`` is set (the node: ``MIGMANAGERD_SIM_STATE``,
created from ``MIGMANAGERD_SIM_NODE`` if missing), so a person can try the
real NVML code path on a simulated node.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from migmanagerd.errors import UsageError
from migmanagerd.gpu.nvml_standin.clients import ClientRegistry
from migmanagerd.gpu.nvml_standin.library import SYMBOLS, StandinLibrary
from migmanagerd.gpu.sim import SimBackend, state_path_from_env

STANDIN_ENV = "MIGMANAGERD_NVML_STANDIN"  # "sim": the simulated node of MIGMANAGERD_SIM_STATE
STRICT_ENV = "MIGMANAGERD_NVML_STANDIN_STRICT"  # "1": *count is the buffer's capacity
BUSY_ENV = "MIGMANAGERD_NVML_STANDIN_BUSY"  # "0,3": GPUs whose mode change answers IN_USE

__all__ = ["BUSY_ENV", "STANDIN_ENV", "STRICT_ENV", "SYMBOLS", "ClientRegistry", "StandinLibrary", "enabled", "ensure_installed", "from_env", "install", "load_bindings", "nvidia_smi_argv", "sysfs_root", "uninstall"]


def enabled() -> bool:
    value = os.environ.get(STANDIN_ENV, "").strip().lower()
    if value in ("", "0", "no", "off"):
        return False
    if value != "sim":
        raise UsageError(f"{STANDIN_ENV}={value!r}: the only stand-in is 'sim' (the simulated node of MIGMANAGERD_SIM_STATE)")
    return True


def _gpu_list(text: str, where: str) -> tuple[int, ...]:
    items = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() for p in items):
        raise UsageError(f"{where}={text!r}: expected GPU indices, e.g. 0,3")
    return tuple(int(p) for p in items)


def from_env() -> StandinLibrary:
    """The stand-in the environment asks for, over a node that exists."""
    path = state_path_from_env()
    SimBackend(path)  # creates the node from MIGMANAGERD_SIM_NODE if needed, or says how
    return StandinLibrary(
        path,
        strict_count=os.environ.get(STRICT_ENV, "").strip() == "1",
        busy_gpus=_gpu_list(os.environ.get(BUSY_ENV, ""), BUSY_ENV),
    )


def _bindings() -> Any:
    import pynvml  # nvidia-ml-py, imported only where the stand-in is wanted

    return pynvml


def install(lib: StandinLibrary, nvml: Any = None) -> Any:
    """Make ``pynvml`` (unmodified) load ``lib`` as its NVML library."""
    if nvml is None:
        nvml = _bindings()
    with nvml.libLoadLock:
        nvml.nvmlLib = lib
        nvml._nvmlGetFunctionPointer_cache.clear()  # pointers of an earlier library
    return nvml


def uninstall(nvml: Any = None) -> None:
    if nvml is None:
        nvml = _bindings()
    with nvml.libLoadLock:
        nvml.nvmlLib = None
        nvml._nvmlGetFunctionPointer_cache.clear()
        nvml._nvmlLib_refcount = 0


def ensure_installed() -> StandinLibrary:
    """The environment's stand-in in ``pynvml``; the one already there when it
    serves the same node (its sessions stay valid for open backends)."""
    pynvml = _bindings()
    current = pynvml.nvmlLib
    if isinstance(current, StandinLibrary) and current.state_path.resolve() == state_path_from_env().resolve():
        return current
    lib = from_env()
    install(lib, pynvml)
    return lib


def load_bindings() -> Any:
    """A private copy of the unmodified ``pynvml`` module (its own ``nvmlLib``
    and refcount), so several stand-ins can live in one process."""
    import importlib.util

    path = _bindings().__file__
    spec = importlib.util.spec_from_file_location("pynvml", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    real = sys.modules.get("pynvml")
    # pynvml adds its NVMLError_* classes to sys.modules[__name__]: let that
    # be the copy while it loads, so they land on it.
    sys.modules["pynvml"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        if real is not None:
            sys.modules["pynvml"] = real
    return module


def sysfs_root(lib: StandinLibrary) -> Path:
    """A sysfs tree for ``NvmlBackend.reset_available``: each GPU's PCI
    function offers ``reset`` unless the node was made with ``--no-reset``."""
    from migmanagerd.gpu.nvml import pci_sysfs_name

    node = SimBackend(lib.state_path).snapshot()
    root = lib.state_path.with_name(lib.state_path.name + ".sysfs")
    for gpu in node.gpus:
        dev = root / "bus" / "pci" / "devices" / pci_sysfs_name(gpu.pci_bus_id)
        dev.mkdir(parents=True, exist_ok=True)
        reset = dev / "reset"
        if node.no_reset:
            reset.unlink(missing_ok=True)
        else:
            reset.touch()
    return root


def nvidia_smi_argv(lib: StandinLibrary) -> tuple[str, ...]:
    """The stand-in ``nvidia-smi`` for this node (it resets GPUs of the simulator)."""
    return (sys.executable, "-m", "migmanagerd.gpu.nvml_standin.smi", "--sim-state", str(Path(lib.state_path).resolve()))
