"""A simulated node with its own root, as the CLI and the service find it."""

from __future__ import annotations

from pathlib import Path

from apply_helpers import use_backend_env

from migmanagerd.gpu.sim import init_node
from migmanagerd.service.paths import NodePaths

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


def sim_node_root(tmp_path: Path, monkeypatch, *, spec: str = "2xA100-SXM4-40GB", extra_config: str = "") -> NodePaths:
    """``<tmp>/root`` holding the shipped config.yaml (plus ``extra_config``
    configs), a simulated ``spec`` node, and the environment pointing at both;
    no selection in the environment. Dirs 0755: the trust check needs that."""
    root = tmp_path / "root"
    etc = root / "etc" / "nvidia-mig-manager"
    etc.mkdir(parents=True)
    for d in (root, root / "etc", etc):
        d.chmod(0o755)
    (etc / "config.yaml").write_text(SHIPPED_CONFIG.read_text() + extra_config)
    state = tmp_path / "sim.json"
    init_node(state, spec)
    monkeypatch.setenv("MIGMANAGERD_ROOT", str(root))
    use_backend_env(monkeypatch)  # sim, or NVML through the stand-in (apply_helpers.BACKEND)
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(state))
    for var in ("MIG_PARTED_SELECTED_CONFIG", "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_HOOKS_FILE"):
        monkeypatch.delenv(var, raising=False)
    return NodePaths.from_env()
