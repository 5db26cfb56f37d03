"""``request`` under a failure, or a SIGKILL, at every step of a two-GPU layout change.

The node (simulated 2xA100-SXM4-40GB, MIG on, catalog geometries): GPU 0 holds
``1g.5gb x7`` with the instance at slot 0 leased to ``keep`` and the one at
slot 1 busy (a live process attached by UUID); GPU 1 is empty. The request
under test, ``5 x 9000 MiB`` for ``job``, changes GPU 0 (destroys its five free
instances, creates three) and then GPU 1 (creates six), one GPU at a time.

After each case:

* the busy and the leased instance are where they were, with their UUIDs;
* no GPU instance is left without its compute instance (no half-made
  instance), once the next request ran;
* no lease names a device that does not exist, and ``pending`` is empty;
* a failure exits 1 and, unless only ``apply-exit`` failed, leaves every
  GPU's layout as it was; a kill dies of SIGKILL; and the next request, with
  the fault gone, is served (exit 0, five distinct devices).

docs/fault-matrix.md records the size of this matrix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from apply_helpers import sim_node

from migmanagerd.cli.main import main
from migmanagerd.gpu.sim import SimBackend
from migmanagerd.gpu.sim_faults import PROCESS_FAULTS
from migmanagerd.service.paths import NodePaths

REPO = Path(__file__).resolve().parents[1]
HOOKS = ("apply-start", "pre-apply-config", "apply-exit")
OPS = ("destroy_ci:1", "destroy_ci:5", "destroy_gi:1", "destroy_gi:5", "create_gi:1", "create_gi:4",
       "create_gi:9", "create_ci:1", "create_ci:4", "create_ci:9")
REQUEST = ("request", "--json", "--count", "5", "--memory", "9000", "--owner", "job")

ENABLE = """\
version: v1
mig-configs:
  all-enabled:
    - devices: all
      mig-enabled: true
      mig-devices: {}
"""


@dataclass(frozen=True)
class Case:
    step: str  # hook:NAME | op:RULE | leases:N
    how: str  # fail | kill

    @property
    def id(self) -> str:
        return f"{self.how}-{self.step}"


CASES = [Case(f"hook:{h}", how) for h in HOOKS for how in ("fail", "kill")]
CASES += [Case(f"op:{op}", how) for op in OPS for how in ("fail", "kill")]
# failure-only: GPU 1 fails after GPU 0 was changed (GPU 0 is undone too); the
# disk refuses the final lease write (ENOSPC)
CASES += [Case("op:create_gi@1:2", "fail"), Case("leases:2", "fail")]
FAULT_CASES = [c for c in CASES if c.how == "fail"]
KILL_CASES = [c for c in CASES if c.how == "kill"]


class Node:
    def __init__(self, tmp: Path, backend: SimBackend) -> None:
        self.tmp = tmp
        self.backend = backend
        self.paths = NodePaths.from_env()
        self.hooks = tmp / "hooks.yaml"
        self.write_hooks()

    def write_hooks(self, failing: str | None = None, how: str = "fail") -> None:
        lines = ["version: v1", "hooks:"]
        for h in HOOKS:
            cmd = f"echo {h} >> {self.tmp / 'hooks.log'}"
            if h == failing:
                cmd += "; kill -9 $PPID" if how == "kill" else "; exit 1"
            lines += [f"  {h}:", "    - workdir: /", "      command: /bin/sh", f"      args: [-c, {json.dumps(cmd)}]"]
        self.hooks.write_text("\n".join(lines) + "\n")
        self.hooks.chmod(0o644)

    def leases(self) -> dict:
        path = self.paths.state_dir / "leases.json"
        return json.loads(path.read_text()) if path.exists() else {"leases": [], "pending": []}

    def layout(self) -> list[list[tuple[int, int]]]:
        return [sorted((gi.start, gi.profile_id) for gi in self.backend.gpu_instances(i)) for i in range(2)]

    def uuids_at(self) -> dict[str, int]:
        return {ci.uuid: gi.start for gi in self.backend.gpu_instances(0) for ci in gi.compute_instances}

    def half_made(self) -> list[str]:
        return [f"GPU {i} GI {gi.id}" for i in range(2) for gi in self.backend.gpu_instances(i) if not gi.compute_instances]

    def existing(self) -> set[str]:
        return {ci.uuid for i in range(2) for gi in self.backend.gpu_instances(i) for ci in gi.compute_instances}


@pytest.fixture
def node(tmp_path: Path, monkeypatch, capsys) -> Iterator[tuple[Node, str, str]]:
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(backend.state_path))
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "sim")
    for var in ("MIG_PARTED_SELECTED_CONFIG", "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_HOOKS_FILE",
                "MIGMANAGERD_SIM_FAULTS", "MIGMANAGERD_GEOMETRIES_FILE", "MIGMANAGERD_TEST_KILL"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(ENABLE)
    assert main(["apply", "-f", str(cfg), "-c", "all-enabled"]) == 0
    assert main(["request", "--count", "7", "--profile", "1g.5gb", "--owner", "setup", "--json"]) == 0
    assert main(["release", "--owner", "setup"]) == 0
    assert main(["request", "--count", "1", "--profile", "1g.5gb", "--owner", "keep", "--json"]) == 0
    leased = json.loads(_last_json(capsys))["devices"][0]["uuid"]
    n = Node(tmp_path, backend)
    by_start = {start: u for u, start in n.uuids_at().items()}
    busy = by_start[1]
    holder = subprocess.Popen(["sleep", "300"])
    backend.attach_device(busy, holder.pid)
    monkeypatch.setenv("MIG_PARTED_HOOKS_FILE", str(n.hooks))
    try:
        yield n, leased, busy
    finally:
        holder.kill()
        holder.wait(timeout=30)


def _last_json(capsys) -> str:
    out = capsys.readouterr().out
    start = out.rindex("\n{") + 1 if "\n{" in out else out.index("{")
    return out[start:]


def check_pinned(n: Node, leased: str, busy: str) -> None:
    at = n.uuids_at()
    assert at.get(leased) == 0, "the leased instance moved or is gone"
    assert at.get(busy) == 1, "the busy instance moved or is gone"


def check_next_request(n: Node, leased: str, busy: str, capsys) -> None:
    code = main(list(REQUEST))
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads(out)
    got = [d["uuid"] for d in doc["devices"]]
    assert len(set(got)) == 5 and leased not in got and busy not in got
    assert n.half_made() == []
    check_pinned(n, leased, busy)
    book = n.leases()
    assert book["pending"] == []
    assert {x["uuid"] for x in book["leases"]} <= n.existing()
    assert sorted(x["owner"] for x in book["leases"]) == ["job"] * 5 + ["keep"]


@pytest.mark.parametrize("case", FAULT_CASES, ids=lambda c: c.id)
def test_fault(case: Case, node, monkeypatch, capsys) -> None:
    n, leased, busy = node
    before = n.layout()
    kind, _, what = case.step.partition(":")
    from migmanagerd.ondemand import leases as leases_mod

    real = leases_mod.write_atomic
    if kind == "hook":
        n.write_hooks(failing=what)
    elif kind == "op":
        monkeypatch.setenv("MIGMANAGERD_SIM_FAULTS", what)
        PROCESS_FAULTS.reset()
    else:
        calls = {"n": 0}

        def refuse(path, data, mode=0o600):
            calls["n"] += 1
            if calls["n"] == int(what):
                raise OSError(28, "No space left on device")
            return real(path, data, mode)

        monkeypatch.setattr(leases_mod, "write_atomic", refuse)
    try:
        code = main(list(REQUEST))
    finally:
        monkeypatch.delenv("MIGMANAGERD_SIM_FAULTS", raising=False)
        monkeypatch.setattr(leases_mod, "write_atomic", real)
        PROCESS_FAULTS.reset()
    err = capsys.readouterr().err
    assert code == 1, err
    check_pinned(n, leased, busy)
    assert n.half_made() == []
    if case.step != "hook:apply-exit" and kind != "leases":
        assert n.layout() == before, "a failed request must leave every GPU as it was"
        assert [x["owner"] for x in n.leases()["leases"]] == ["keep"]
    if kind == "hook":
        log = (n.tmp / "hooks.log").read_text().split()
        assert log[-1] == "apply-exit" and log.count("apply-exit") == 1
    n.write_hooks()
    check_next_request(n, leased, busy, capsys)


@pytest.mark.parametrize("case", KILL_CASES, ids=lambda c: c.id)
def test_kill(case: Case, node, capsys) -> None:
    n, leased, busy = node
    kind, _, what = case.step.partition(":")
    env = dict(os.environ)
    if kind == "hook":
        n.write_hooks(failing=what, how="kill")
    else:
        env["MIGMANAGERD_TEST_KILL"] = what
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "e2e_support.py"), *REQUEST], env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    check_pinned(n, leased, busy)
    book = n.leases()
    assert {x["uuid"] for x in book["leases"]} <= n.existing(), "a lease without a device"
    n.write_hooks()
    check_next_request(n, leased, busy, capsys)


def test_matrix_size_is_documented() -> None:
    doc = (REPO / "docs" / "fault-matrix.md").read_text()
    line = f"On demand: {len(FAULT_CASES)} fault cases, {len(KILL_CASES)} kill cases"
    assert line in doc, f"docs/fault-matrix.md must say: {line}"
