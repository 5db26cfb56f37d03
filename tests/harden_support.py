"""A throwaway node root for the attack tests (tests/test_attacks_*.py):
the shipped config.yaml on a simulated node, and `migmanagerd` run as a
process with a memory cap, so an attack that once exhausted memory fails the
test instead of the machine."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from migmanagerd.gpu.sim import init_node
from migmanagerd.service.paths import NodePaths

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "config" / "config.yaml"
MEMORY_CAP = 1 << 30  # bytes of address space for a `migmanagerd` under attack
RUN_TIMEOUT_S = 120  # a bound on every process; the attacks it replaces took minutes

# the unprivileged user the privilege and race attacks run as (exists on
# Debian and Ubuntu; never created by the tests)
NOBODY = 65534


@dataclass(frozen=True)
class Node:
    root: Path
    paths: NodePaths
    env: dict[str, str]

    @property
    def etc(self) -> Path:
        return self.paths.config_file.parent

    def run(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "migmanagerd", *args],
            env={**self.env, **(extra_env or {})}, capture_output=True, text=True,
            timeout=RUN_TIMEOUT_S, preexec_fn=_cap_memory, check=False,
        )


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def make_node(tmp_path: Path, monkeypatch, *, spec: str = "2xA100-SXM4-40GB") -> Node:
    """``<tmp>/root`` with the shipped config.yaml (dirs 0755, files 0644, as
    a package installs them) and a simulated ``spec`` node."""
    root = tmp_path / "root"
    etc = root / "etc" / "nvidia-mig-manager"
    etc.mkdir(parents=True)
    for d in (tmp_path, root, root / "etc", etc):
        d.chmod(0o755)
    (etc / "config.yaml").write_text(SHIPPED_CONFIG.read_text())
    (etc / "config.yaml").chmod(0o644)
    sim = tmp_path / "sim.json"
    init_node(sim, spec)
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("MIG_PARTED_SELECTED_CONFIG", "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_HOOKS_FILE")
    }
    env.update(MIGMANAGERD_ROOT=str(root), MIGMANAGERD_BACKEND="sim", MIGMANAGERD_SIM_STATE=str(sim))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for var in ("MIG_PARTED_SELECTED_CONFIG", "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_HOOKS_FILE"):
        monkeypatch.delenv(var, raising=False)
    return Node(root, NodePaths.from_env(), env)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def alias_bomb(levels: int = 6, width: int = 10) -> str:
    """A YAML value that expands to width**levels strings (10**6 by default)
    from a few hundred bytes."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def can_setpriv() -> str | None:
    """Why the unprivileged-user attacks cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (to drop to uid 65534 with setpriv)"
    if not any((Path(d) / "setpriv").exists() for d in os.environ.get("PATH", "/usr/bin").split(":")):
        return "needs setpriv (util-linux)"
    return None


def as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
