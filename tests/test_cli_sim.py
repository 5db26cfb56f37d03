"""``migmanagerd sim …``: the operator's handle on the simulated node."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from migmanagerd.cli.main import main
from migmanagerd.gpu import sim
from migmanagerd.gpu.sim_faults import PROCESS_FAULTS


@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path):
    for var in ("MIGMANAGERD_SIM_FAULTS", "MIGMANAGERD_SIM_LATENCY", "MIGMANAGERD_SIM_NODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(tmp_path / "node.json"))
    PROCESS_FAULTS.reset()
    return tmp_path / "node.json"


def run(capsys, *argv):
    rc = main(["sim", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def show_json(capsys):
    rc, out, _ = run(capsys, "show", "--json")
    assert rc == 0
    return json.loads(out)


def test_init_and_show_table(capsys, env):
    rc, out, _ = run(capsys, "init", "--node", "2xA100-SXM4-40GB,1x0x1FB010DE")
    assert rc == 0 and "3 GPU(s)" in out and env.exists()
    rc, out, _ = run(capsys, "show")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["GPU", "MODEL", "MIG", "INSTANCES"]
    assert lines[1].split()[:3] == ["0", "A100-SXM4-40GB", "off"]
    assert "no MIG" in lines[3] and "0x1FB010DE" in lines[3]


def test_show_json_after_changes(capsys, env):
    run(capsys, "init", "--node", "1xA100-SXM4-40GB")
    b = sim.SimBackend(env)
    b.set_mig_mode(0, True)
    view = show_json(capsys)
    assert view["gpus"][0]["mig_enabled"] is False and view["gpus"][0]["mig_pending"] is True
    rc, out, _ = run(capsys, "show")
    assert "off (pending on)" in out
    b.reset([0])
    model = b.model_of(0)
    g3 = b.create_gpu_instance(0, model.gi_profile("3g.20gb").nvml_id, 4)
    c = b.create_compute_instance(0, g3.id, model.gi_profile("3g.20gb").ci_profile("1c.3g.20gb").nvml_id)
    g1 = b.create_gpu_instance(0, model.gi_profile("1g.5gb").nvml_id, 0)
    b.create_compute_instance(0, g1.id, model.gi_profile("1g.5gb").full_ci.nvml_id)
    view = show_json(capsys)
    gpu = view["gpus"][0]
    assert gpu["device_id"] == "0x20B010DE" and gpu["uuid"].startswith("GPU-") and gpu["model"] == "A100-SXM4-40GB"
    assert [(i["profile"], i["start"], i["size"]) for i in gpu["instances"]] == [("1g.5gb", 0, 1), ("1c.3g.20gb", 4, 4)]
    assert gpu["instances"][1]["uuid"] == c.uuid
    assert view["ops"] == {"create_gi": 2, "destroy_gi": 0, "create_ci": 2, "destroy_ci": 0, "set_mode": 1, "reset": 1}
    rc, out, _ = run(capsys, "show")
    assert "1g.5gb@0 1c.3g.20gb@4" in out


def test_init_knobs_are_stored(capsys, env):
    rc, _, _ = run(capsys, "init", "--node", "1xA100-SXM4-40GB", "--latency", "create_gi=0.2,reset=2", "--no-reset")
    assert rc == 0
    node = sim.SimBackend(env).snapshot()
    assert node.latency == {"create_gi": 0.2, "reset": 2.0} and node.no_reset is True
    assert sim.SimBackend(env).reset_available(0) is False


def test_init_twice_needs_force(capsys, env):
    run(capsys, "init", "--node", "1xA100-SXM4-40GB")
    rc, _, err = run(capsys, "init", "--node", "2xH100-80GB")
    assert rc == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    rc, _, _ = run(capsys, "init", "--node", "2xH100-80GB", "--force")
    assert rc == 0 and len(show_json(capsys)["gpus"]) == 2


@pytest.mark.parametrize(
    "argv, words",
    [
        (["init", "--node", "8xNoSuch"], ["NoSuch"]),
        (["init", "--node", "1xA100-SXM4-40GB", "--latency", "create_gi=fast"], ["--latency", "fast"]),
        (["init", "--node", "1xA100-SXM4-40GB", "--latency", "warp=1"], ["warp"]),
    ],
)
def test_bad_init_input_exit_2_and_nothing_written(capsys, env, argv, words):
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for w in words:
        assert w in err
    assert not env.exists()


def test_missing_state_variable(capsys, monkeypatch):
    monkeypatch.delenv("MIGMANAGERD_SIM_STATE")
    rc, _, err = run(capsys, "show")
    assert rc == 2 and "MIGMANAGERD_SIM_STATE" in err


def test_show_without_node(capsys):
    rc, _, err = run(capsys, "show")
    assert rc == 2 and "sim init" in err


def test_state_flag_overrides_env(capsys, tmp_path):
    other = tmp_path / "other.json"
    rc, _, _ = run(capsys, "init", "--node", "3xA30-24GB", "--state", str(other))
    assert rc == 0 and other.exists()
    rc = main(["sim", "--state", str(other), "show", "--json"])
    out, _ = capsys.readouterr()
    assert rc == 0 and len(json.loads(out)["gpus"]) == 3


def test_reboot_applies_pending_mode(capsys, env):
    run(capsys, "init", "--node", "1xA100-SXM4-40GB,1xH100-80GB")
    b = sim.SimBackend(env)
    b.set_mig_mode(0, True)
    b.set_mig_mode(1, True)
    rc, _, _ = run(capsys, "reboot")
    assert rc == 0
    gpus = show_json(capsys)["gpus"]
    assert (gpus[0]["mig_enabled"], gpus[1]["mig_enabled"]) == (True, False)


def test_attach_and_detach(capsys, env):
    run(capsys, "init", "--node", "2xA100-SXM4-40GB")
    pid = os.getpid()
    assert run(capsys, "attach", "--gpu", "1", "--pid", str(pid))[0] == 0
    assert show_json(capsys)["gpus"][1]["processes"] == [pid]
    rc, out, _ = run(capsys, "show")
    assert f"[pids {pid}]" in out
    assert run(capsys, "detach", "--gpu", "1", "--pid", str(pid))[0] == 0
    assert show_json(capsys)["gpus"][1]["processes"] == []
    rc, _, err = run(capsys, "detach", "--gpu", "1", "--pid", str(pid))
    assert rc == 2 and str(pid) in err
    rc, _, err = run(capsys, "attach", "--gpu", "7", "--pid", str(pid))
    assert rc == 2 and "--gpu 7" in err and "0..1" in err


def test_entry_point_end_to_end(env):
    environ = {**os.environ, "MIGMANAGERD_SIM_STATE": str(env)}
    subprocess.run([sys.executable, "-m", "migmanagerd", "sim", "init", "--node", "1xH100-80GB"], env=environ, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "migmanagerd", "sim", "show", "--json"], env=environ, check=True, capture_output=True, text=True)
    assert json.loads(out.stdout)["gpus"][0]["model"] == "H100-80GB"
