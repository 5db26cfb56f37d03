"""Pick a GPU backend by name: flag, else env ``MIGMANAGERD_BACKEND``, else ``nvml``."""

from __future__ import annotations

import os

from migmanagerd.errors import UsageError
from migmanagerd.gpu.backend import Backend

BACKEND_ENV = "MIGMANAGERD_BACKEND"
BACKENDS = ("nvml", "sim")


def backend_name(name: str | None = None) -> str:
    chosen = (name or os.environ.get(BACKEND_ENV) or "nvml").strip().lower()
    if chosen not in BACKENDS:
        source = "--backend" if name else BACKEND_ENV
        raise UsageError(f"{source}: unknown GPU backend '{chosen}' (known: {', '.join(BACKENDS)})")
    return chosen


def open_backend(name: str | None = None) -> Backend:
    """Open the named backend; imports are late so ``sim`` never needs NVML."""
    chosen = backend_name(name)
    if chosen == "sim":
        from migmanagerd.gpu.sim import SimBackend

        return SimBackend()
    from migmanagerd.gpu import nvml_standin
    from migmanagerd.gpu.nvml import NvmlBackend

    if nvml_standin.enabled():  # the real NVML code path on a simulated node
        lib = nvml_standin.ensure_installed()
        return NvmlBackend(nvidia_smi=nvml_standin.nvidia_smi_argv(lib), sysfs_root=nvml_standin.sysfs_root(lib))
    return NvmlBackend()
