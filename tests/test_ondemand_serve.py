"""``request`` / ``release`` / ``status`` leases end to end on a simulated node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apply_helpers import catalog, sim_node
from test_ondemand_select import HAMI_A100

from migmanagerd.cli.main import main
from migmanagerd.gpu.sim import SimBackend
from migmanagerd.service.paths import NodePaths

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 30.0

ENABLE = """\
version: v1
mig-configs:
  all-enabled:
    - devices: all
      mig-enabled: true
      mig-devices: {}
"""


class Node:
    def __init__(self, tmp_path: Path, backend: SimBackend) -> None:
        self.tmp = tmp_path
        self.backend = backend
        self.paths = NodePaths.from_env()
        self.geometries = tmp_path / "device-config.yaml"
        self.geometries.write_text(HAMI_A100)
        self.config = tmp_path / "config.yaml"
        self.config.write_text(ENABLE)

    @property
    def leases(self) -> dict:
        path = self.paths.state_dir / "leases.json"
        return json.loads(path.read_text()) if path.exists() else {"leases": [], "pending": []}

    def devices(self, gpu: int) -> list[tuple[int, str, str]]:
        """(start, GI profile id, UUID) per compute instance: placement and identity."""
        out = []
        for gi in self.backend.gpu_instances(gpu):
            assert gi.compute_instances, f"GPU {gpu}: GPU instance {gi.id} has no compute instance"
            for ci in gi.compute_instances:
                out.append((gi.start, str(gi.profile_id), ci.uuid))
        return sorted(out)

    def ops(self) -> dict[str, int]:
        return {k: v for k, v in self.backend.snapshot().ops.items() if v}

    def env(self) -> dict[str, str]:
        return {**os.environ}


@pytest.fixture
def node(tmp_path: Path, monkeypatch, capsys) -> Node:
    backend = sim_node(tmp_path, "2xA100-PCIE-40GB")
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(backend.state_path))
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "sim")
    for var in ("MIG_PARTED_SELECTED_CONFIG", "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_HOOKS_FILE",
                "MIGMANAGERD_SIM_FAULTS", "MIGMANAGERD_GEOMETRIES_FILE"):
        monkeypatch.delenv(var, raising=False)
    n = Node(tmp_path, backend)
    monkeypatch.setenv("MIGMANAGERD_GEOMETRIES_FILE", str(n.geometries))
    assert main(["apply", "-f", str(n.config), "-c", "all-enabled"]) == 0
    capsys.readouterr()
    return n


def request(capsys, *args: str) -> tuple[int, dict]:
    code = main(["request", "--json", *args])
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else {})


def test_hami_example_on_an_empty_a100(node: Node, capsys) -> None:
    code, doc = request(capsys, "--count", "2", "--memory", "8000", "--owner", "job1")
    assert code == 0
    assert doc["geometries"] == {"0": "2g.10gb x3 + 1g.5gb x1"}
    assert [d["profile"] for d in doc["devices"]] == ["2g.10gb", "2g.10gb"]
    assert doc["cuda_visible_devices"] == ",".join(d["uuid"] for d in doc["devices"])
    uuids = {u for _, _, u in node.devices(0)}
    assert {d["uuid"] for d in doc["devices"]} <= uuids
    assert len(node.devices(0)) == 4 and node.devices(1) == []  # one GPU changed, only it
    assert [x["owner"] for x in node.leases["leases"]] == ["job1", "job1"]


def test_free_instances_are_reused_before_any_change(node: Node, capsys) -> None:
    code, first = request(capsys, "--count", "2", "--memory", "8000", "--owner", "job1")
    assert code == 0
    before = node.ops()
    # the third 2g.10gb of that geometry is free: no change at all
    code, doc = request(capsys, "--count", "1", "--memory", "8000", "--owner", "job2")
    assert code == 0 and doc["changed_gpus"] == []
    assert node.ops() == before
    assert doc["devices"][0]["uuid"] not in {d["uuid"] for d in first["devices"]}


def test_release_then_the_same_devices_are_handed_out_again(node: Node, capsys) -> None:
    code, first = request(capsys, "--count", "2", "--memory", "8000", "--owner", "job1")
    assert main(["release", "--owner", "job1"]) == 0
    assert "released GPU 0 2g.10gb" in capsys.readouterr().out
    assert node.leases["leases"] == []
    before = node.ops()
    code, again = request(capsys, "--count", "2", "--memory", "8000", "--owner", "job3")
    assert code == 0 and again["changed_gpus"] == [] and node.ops() == before
    assert main(["release", "--owner", "nobody"]) == 0
    assert "no lease held by nobody" in capsys.readouterr().out


def test_busy_instance_never_moves_nor_changes_uuid(node: Node, capsys) -> None:
    code, first = request(capsys, "--count", "1", "--profile", "1g.5gb", "--owner", "job1")
    assert code == 0
    busy_uuid = first["devices"][0]["uuid"]
    holder = subprocess.Popen(["sleep", "60"])
    try:
        node.backend.attach_device(busy_uuid, holder.pid)
        assert main(["release", "--owner", "job1"]) == 0  # not leased any more, but a process runs on it
        capsys.readouterr()
        busy_before = [d for d in node.devices(0) if d[2] == busy_uuid]
        code, doc = request(capsys, "--count", "2", "--memory", "16000", "--owner", "job2", "--policy", "binpack")
        assert code == 0
        assert [d for d in node.devices(0) if d[2] == busy_uuid] == busy_before
        assert busy_uuid not in {d["uuid"] for d in doc["devices"]}
    finally:
        holder.kill()
        holder.wait(timeout=WAIT_S)


def test_binpack_and_spread_pick_different_gpus(node: Node, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MIGMANAGERD_GEOMETRIES_FILE")  # the catalog's geometries
    assert request(capsys, "--count", "1", "--profile", "1g.5gb", "--owner", "job1")[0] == 0
    # GPU 0 now holds a leased 1g.5gb at slot 0; a 3g.20gb still fits beside it, so both GPUs can serve
    code, packed = request(capsys, "--count", "1", "--memory", "16000", "--dry-run", "--policy", "binpack")
    code2, spread = request(capsys, "--count", "1", "--memory", "16000", "--dry-run", "--policy", "spread")
    assert code == 0 and code2 == 0
    assert packed["changed_gpus"] == [0] and spread["changed_gpus"] == [1]
    assert packed["dry_run"] and packed["devices"][0]["uuid"] == "(new)"


def test_refused_request_changes_nothing(node: Node, capsys) -> None:
    request(capsys, "--count", "1", "--memory", "8000", "--owner", "job1")
    before = (node.devices(0), node.devices(1), node.leases["leases"], node.ops())
    code = main(["request", "--count", "3", "--memory", "40000", "--owner", "job2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "request refused: cannot serve 3 x 40000 MiB" in err and "nothing changed" in err
    assert (node.devices(0), node.devices(1), node.leases["leases"], node.ops()) == before


def test_status_lists_leases_and_draws_the_node(node: Node, capsys) -> None:
    request(capsys, "--count", "2", "--memory", "8000", "--owner", "job1")
    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(x["gpu"], x["profile"], x["owner"]) for x in doc["leases"]] == [(0, "2g.10gb", "job1")] * 2
    assert main(["status", "--picture", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "Leases:" in out and "owner job1" in out
    assert "[@2g.10gb" in out and "GPU 1 " in out


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "migmanagerd", *args], cwd=REPO, env=env or dict(os.environ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_concurrent_requests_never_share_a_device(node: Node) -> None:
    env = {**os.environ, "MIGMANAGERD_SIM_LATENCY": "create_gi=0.05"}
    procs = [_cli("request", "--json", "--count", "2", "--memory", "8000", "--owner", f"job{i}", env=env) for i in range(2)]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    a, b = ({d["uuid"] for d in doc["devices"]} for doc in docs)
    assert len(a) == 2 and len(b) == 2 and not a & b
    assert len(node.leases["leases"]) == 4


def test_pid_owner_is_released_when_the_process_is_gone(node: Node, capsys) -> None:
    # the shell is the caller: its PID owns the lease, and it exits at once
    sh = subprocess.run(
        ["sh", "-c", f"{sys.executable} -m migmanagerd request --json --count 1 --memory 8000"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert sh.returncode == 0, sh.stderr
    owner = json.loads(sh.stdout)["owner"]
    assert owner.startswith("pid:")
    assert [x["owner"] for x in node.leases["leases"]] == [owner]
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["leases"] == []  # gone with its process
    code, doc = request(capsys, "--count", "1", "--memory", "8000", "--owner", "job2")
    assert code == 0 and doc["changed_gpus"] == []  # its device is free again
    assert [x["owner"] for x in node.leases["leases"]] == ["job2"]


def test_hooks_run_around_a_change_and_not_for_a_reuse(node: Node, capsys, monkeypatch) -> None:
    log = node.tmp / "hooks.log"
    hooks = node.tmp / "hooks.yaml"
    hooks.write_text(
        "version: v1\nhooks:\n" + "".join(
            f"  {h}:\n    - workdir: /\n      command: /bin/sh\n      args: [-c, 'echo {h} $MIGMANAGERD_GPUS >> {log}']\n"
            for h in ("apply-start", "pre-apply-config", "apply-exit")
        )
    )
    hooks.chmod(0o644)
    assert request(capsys, "--count", "1", "--memory", "8000", "--owner", "j", "-k", str(hooks))[0] == 0
    assert log.read_text().split("\n") == ["apply-start 0", "pre-apply-config 0", "apply-exit 0", ""]
    assert request(capsys, "--count", "1", "--memory", "8000", "--owner", "j", "-k", str(hooks))[0] == 0
    assert len(log.read_text().splitlines()) == 3


def test_persist_writes_the_layout_as_a_config_and_selects_it(node: Node, capsys) -> None:
    assert request(capsys, "--count", "2", "--memory", "8000", "--owner", "j", "--persist", "dynamic")[0] == 0
    persisted = node.paths.config_file.with_name("ondemand.yaml")
    assert '"2g.10gb": 3' in persisted.read_text()
    dropin = node.paths.dropin.read_text()
    assert "MIG_PARTED_SELECTED_CONFIG=dynamic" in dropin and str(persisted) in dropin
    assert main(["assert", "-f", str(persisted), "-c", "dynamic"]) == 0


def test_kill_9_mid_request_then_a_normal_request(node: Node, capsys) -> None:
    env = {**os.environ, "MIGMANAGERD_TEST_KILL": "create_gi:2"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "e2e_support.py"), "request", "--count", "2", "--memory", "8000",
         "--owner", "killed"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    assert node.leases["pending"]  # it was changing GPU 0
    half = [gi for gi in node.backend.gpu_instances(0) if not gi.compute_instances]
    assert half, "killed right after a create_gi: one GPU instance has no compute instance"
    code, doc = request(capsys, "--count", "2", "--memory", "8000", "--owner", "next")
    assert code == 0
    node.devices(0)  # asserts: no GPU instance without a compute instance
    node.devices(1)
    assert node.leases["pending"] == []
    assert {x["owner"] for x in node.leases["leases"]} == {"next"}


def test_unknown_profile_and_bad_geometries_are_usage_errors(node: Node, capsys, tmp_path: Path) -> None:
    assert main(["request", "--count", "1", "--profile", "9z.1gb"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(HAMI_A100.replace("count: 7", "count: 8"))
    assert main(["request", "--count", "1", "--memory", "1", "--geometries", str(bad)]) == 2
    assert f"{bad}:" in capsys.readouterr().err


def test_dry_run_picture_marks_what_changes(node: Node, capsys) -> None:
    assert main(["request", "--count", "2", "--memory", "8000", "--dry-run", "--picture", "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "GPU 0: geometry 2g.10gb x3 + 1g.5gb x1; create" in out
    assert "[>2g.10gb" in out and "[+1g.5gb" in out and "slot" in out
    assert node.devices(0) == []  # a dry run changes nothing
    _ = time.monotonic()
    _ = catalog()


def test_pid_owner_skips_a_wrapper_that_exits_with_migmanagerd(node: Node) -> None:
    # `timeout` (like sudo) forks migmanagerd and exits with it; the shell around it is the owner
    sh = subprocess.run(
        ["sh", "-c", f"timeout 120 {sys.executable} -m migmanagerd request --json --count 1 --memory 8000 && echo $$"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert sh.returncode == 0, sh.stderr
    doc_text, shell_pid = sh.stdout.rsplit("}", 1)
    assert json.loads(doc_text + "}")["owner"] == f"pid:{shell_pid.strip()}"


def test_a_process_holding_the_gpu_but_no_mig_device_pins_nothing(node: Node, capsys) -> None:
    agent = subprocess.Popen(["sleep", "60"])  # a monitoring agent (DCGM) holds every GPU
    try:
        for i in range(2):
            node.backend.attach(i, agent.pid)
        code, doc = request(capsys, "--count", "1", "--memory", "8000", "--owner", "job")
        assert code == 0 and doc["changed_gpus"] == [0]
    finally:
        agent.kill()
        agent.wait(timeout=WAIT_S)


def test_sim_attach_to_a_mig_device_by_uuid(node: Node, capsys) -> None:
    code, doc = request(capsys, "--count", "1", "--profile", "3g.20gb", "--owner", "j")
    uuid = doc["devices"][0]["uuid"]
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert main(["sim", "attach", "--device", uuid, "--pid", str(proc.pid)]) == 0
        assert main(["sim", "show", "--json"]) == 0
        gpu0 = json.loads(capsys.readouterr().out)["gpus"][0]
        assert gpu0["mig_processes"] == [{"pid": proc.pid, "uuid": uuid}]
        listed = node.backend.processes(0)
        gi = next(g for g in node.backend.gpu_instances(0) if g.compute_instances[0].uuid == uuid)
        assert [(p.pid, p.gi_id, p.ci_id) for p in listed] == [(proc.pid, gi.id, gi.compute_instances[0].id)]
        # the device is busy: the simulator refuses to destroy it, and the GPU cannot be reset
        from migmanagerd.gpu.backend import BackendError

        with pytest.raises(BackendError, match="IN_USE"):
            node.backend.destroy_compute_instance(0, gi.id, gi.compute_instances[0].id)
        with pytest.raises(BackendError, match="IN_USE"):
            node.backend.reset([0])
        assert main(["sim", "attach", "--device", "MIG-nope", "--pid", str(proc.pid)]) == 2
        assert main(["sim", "detach", "--gpu", "0", "--pid", str(proc.pid)]) == 0
        assert node.backend.processes(0) == ()
    finally:
        proc.kill()
        proc.wait(timeout=WAIT_S)


def test_status_lists_and_marks_busy_devices(node: Node, capsys) -> None:
    code, doc = request(capsys, "--count", "1", "--profile", "3g.20gb", "--owner", "j")
    uuid = doc["devices"][0]["uuid"]
    proc = subprocess.Popen(["sleep", "60"])
    try:
        node.backend.attach_device(uuid, proc.pid)
        assert main(["status", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["busy_devices"] == [uuid]
        assert main(["status", "--picture", "--no-color"]) == 0
        assert "[*3g.20gb" in capsys.readouterr().out  # busy wins over leased in the picture
    finally:
        proc.kill()
        proc.wait(timeout=WAIT_S)


def test_request_reads_its_files_as_the_boot_does(node: Node, capsys, tmp_path: Path) -> None:
    """A request runs hooks and decides layouts as root: a dangling hooks
    link or a geometries file others may write is refused, nothing changes."""
    before = node.devices(0)
    dangling = tmp_path / "hooks-link.yaml"
    dangling.symlink_to(tmp_path / "missing.yaml")
    assert main(["request", "--count", "1", "--memory", "8000", "--owner", "j", "-k", str(dangling)]) == 2
    assert "hooks-link.yaml" in capsys.readouterr().err
    loose = tmp_path / "loose.yaml"
    loose.write_text(HAMI_A100)
    loose.chmod(0o666)
    assert main(["request", "--count", "1", "--memory", "8000", "--owner", "j", "--geometries", str(loose)]) == 2
    assert "loose.yaml" in capsys.readouterr().err
    assert node.devices(0) == before
    assert node.leases.get("leases", []) == []
