"""`checkpoint` then a different `apply` then `restore` gives back the identical
layout (mode, GPU-instance placements, compute instances and their starts),
through the same run as `apply` (hooks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from node_root import sim_node_root

from migmanagerd.cli.main import main
from migmanagerd.gpu.sim import SimBackend
from migmanagerd.service.selector import read_selector
from migmanagerd.service.state import StateStore

EXTRA = """
  packed:
    - devices: [0]
      mig-enabled: true
      mig-devices:
        "1c.3g.20gb": 1
        "2c.3g.20gb": 1
        "1c.2g.10gb": 2
        "1g.5gb": 1
    - devices: [1]
      mig-enabled: false
  other:
    - devices: all
      mig-enabled: true
      mig-devices:
        "2g.10gb": 3
"""


def _node(tmp_path, monkeypatch):
    paths = sim_node_root(tmp_path, monkeypatch, extra_config=EXTRA)
    trail = tmp_path / "hooks.log"
    hooks = "version: v1\nhooks:\n" + "".join(
        f"  {h}:\n  - command: /bin/sh\n    args: [-c, 'echo {h} $MIGMANAGERD_GPUS >> {trail}']\n"
        for h in ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit")
    )
    paths.hooks_file.write_text(hooks)
    return paths, trail


def _layout() -> list[tuple]:
    """Per GPU: UUID, MIG mode, and each GI (profile, placement) with its CIs (profile, start, size)."""
    backend = SimBackend()
    try:
        out = []
        for info in backend.gpus():
            mode = backend.mig_mode(info.index)
            gis = []
            if mode.current:
                for gi in backend.gpu_instances(info.index):
                    cis = sorted((ci.profile_id, ci.start, ci.size) for ci in gi.compute_instances)
                    gis.append((gi.profile_id, gi.start, gi.size, tuple(cis)))
            out.append((info.uuid, mode.current, mode.pending, tuple(sorted(gis))))
        return out
    finally:
        backend.close()


def _mig_uuids() -> set[str]:
    backend = SimBackend()
    try:
        return {ci.uuid for info in backend.gpus() if backend.mig_mode(info.index).current
                for gi in backend.gpu_instances(info.index) for ci in gi.compute_instances}
    finally:
        backend.close()


def test_checkpoint_apply_restore_gives_the_identical_layout(tmp_path, monkeypatch, capsys):
    paths, trail = _node(tmp_path, monkeypatch)
    assert main(["apply", "-c", "packed"]) == 0
    saved = _layout()
    saved_uuids = _mig_uuids()
    cp = tmp_path / "cp.json"
    assert main(["checkpoint", "-f", str(cp)]) == 0
    assert "checkpointed successfully" in capsys.readouterr().out
    doc = json.loads(cp.read_text())
    assert doc["Version"] == "v1"
    gpu0, gpu1 = doc["MigState"]["Devices"]
    assert (gpu0["MigMode"], gpu1["MigMode"], gpu1["GpuInstances"]) == (1, 0, None)
    # a 3g GI with 2c+1c, a 2g GI with 1c+1c, a 1g: the peer's GI profile ids (selectors)
    assert sorted((g["ProfileID"], len(g["ComputeInstances"])) for g in gpu0["GpuInstances"]) == [(0, 1), (1, 2), (2, 2)]

    assert main(["apply", "-c", "other"]) == 0
    assert _layout() != saved
    trail.unlink()
    capsys.readouterr()

    monkeypatch.setenv("MIG_PARTED_CHECKPOINT_FILE", str(cp))  # the peer's variable instead of -f
    assert main(["restore"]) == 0
    assert "restored successfully" in capsys.readouterr().out
    assert _layout() == saved  # GPU UUIDs, modes, GI placements, CI profiles and starts
    # the MIG devices are new ones: a checkpoint cannot bring back a destroyed UUID
    assert not (_mig_uuids() & saved_uuids)
    # the same run as apply: hooks around the change, on both GPUs
    assert trail.read_text().splitlines() == [
        "apply-start 0,1", "pre-apply-mode 0,1", "pre-apply-config 0,1", "apply-exit 0,1",
    ]
    # the boot-time selection is still the last applied config
    assert read_selector(paths.dropin).selected_config == "other"
    state = StateStore(paths).load().state
    assert state.selected_config == "other" and state.last_run.result == "ok"

    # nothing to do a second time: no hook, no write
    trail.unlink()
    uuids = _mig_uuids()
    assert main(["restore", "-f", str(cp)]) == 0
    assert "already applied" in capsys.readouterr().out
    assert not trail.exists() and _mig_uuids() == uuids


def test_restore_mode_only(tmp_path, monkeypatch, capsys):
    _node(tmp_path, monkeypatch)
    assert main(["apply", "-c", "packed"]) == 0
    cp = tmp_path / "cp.json"
    assert main(["checkpoint", "-f", str(cp)]) == 0
    assert main(["apply", "-c", "other"]) == 0
    assert main(["restore", "-f", str(cp), "-m"]) == 0
    modes = [(m[1], len(m[3])) for m in _layout()]
    assert modes == [(True, 3), (False, 0)]  # GPU 1 disabled again; GPU 0's devices untouched (2g x3)


def test_restore_reads_the_peers_file_without_ci_placements(tmp_path, monkeypatch, capsys):
    _node(tmp_path, monkeypatch)
    backend = SimBackend()
    uuid0, uuid1 = (g.uuid for g in backend.gpus())
    backend.close()
    # as nvidia-mig-parted writes it: CIs in CI-profile order (1c before 2c), no CI placements
    peer = {"Version": "v1", "MigState": {"Devices": [
        {"UUID": uuid0, "MigMode": 1, "GpuInstances": [
            {"ProfileID": 2, "Placement": {"Start": 4, "Size": 4},
             "ComputeInstances": [{"ProfileID": 0, "EngProfileID": 0}, {"ProfileID": 1, "EngProfileID": 0}]}]},
        {"UUID": uuid1, "MigMode": 1, "GpuInstances": None},
    ]}}
    cp = tmp_path / "peer.json"
    cp.write_text(json.dumps(peer, indent="\t"))
    assert main(["restore", "-f", str(cp)]) == 0
    gpu0, gpu1 = _layout()
    # the 2c CI created first (its only start is 0), the 1c after it
    assert gpu0[1:] == (True, True, ((9, 4, 4, ((0, 2, 1), (1, 0, 2))),))
    assert gpu1[1:] == (True, True, ())


@pytest.mark.parametrize(
    "content, words",
    [
        ("{", "not valid JSON"),
        ('{"Version": "v2", "MigState": {"Devices": []}}', "version 'v2' is not supported"),
        ('{"Version": "v1", "MigState": {"Devices": [{"UUID": "GPU-nope", "MigMode": 1}]}}', "GPU-nope is not in this node"),
        ('{"Version": "v1", "MigState": {"Devices": [{"UUID": "GPU-x", "MigMode": 2}]}}', "MigMode must be 0 or 1"),
    ],
)
def test_bad_checkpoint_files_change_nothing(tmp_path, monkeypatch, capsys, content, words):
    _node(tmp_path, monkeypatch)
    before = _layout()
    cp = tmp_path / "bad.json"
    cp.write_text(content)
    assert main(["restore", "-f", str(cp)]) == 2
    assert words in capsys.readouterr().err
    assert _layout() == before


def test_restore_of_an_infeasible_layout_changes_nothing(tmp_path, monkeypatch, capsys):
    _node(tmp_path, monkeypatch)
    backend = SimBackend()
    uuid0 = backend.gpus()[0].uuid
    backend.close()
    overlap = {"Version": "v1", "MigState": {"Devices": [{"UUID": uuid0, "MigMode": 1, "GpuInstances": [
        {"ProfileID": 2, "Placement": {"Start": 0, "Size": 4}, "ComputeInstances": [{"ProfileID": 2, "EngProfileID": 0}]},
        {"ProfileID": 3, "Placement": {"Start": 0, "Size": 4}, "ComputeInstances": [{"ProfileID": 3, "EngProfileID": 0}]},
    ]}]}}
    cp = tmp_path / "overlap.json"
    cp.write_text(json.dumps(overlap))
    before = _layout()
    assert main(["restore", "-f", str(cp)]) == 2
    assert "overlaps" in capsys.readouterr().err
    assert _layout() == before


def test_checkpoint_needs_a_file(tmp_path, monkeypatch, capsys):
    _node(tmp_path, monkeypatch)
    monkeypatch.delenv("MIG_PARTED_CHECKPOINT_FILE", raising=False)
    assert main(["checkpoint"]) == 2
    assert main(["restore"]) == 2
    assert "checkpoint-file" in capsys.readouterr().err
    assert not Path(tmp_path / "cp.json").exists()


def test_restore_keeps_what_already_matches(tmp_path, monkeypatch, capsys):
    """Minimal change: a GPU instance already at its checkpointed placement with
    the same compute instances keeps its GI and its MIG device UUIDs."""
    _node(tmp_path, monkeypatch)
    assert main(["apply", "-c", "packed"]) == 0
    cp = tmp_path / "cp.json"
    assert main(["checkpoint", "-f", str(cp)]) == 0
    backend = SimBackend()
    three = {ci.uuid for gi in backend.gpu_instances(0) if gi.size == 4 for ci in gi.compute_instances}
    backend.close()
    assert len(three) == 2
    config_file = tmp_path / "root" / "etc" / "nvidia-mig-manager" / "config.yaml"
    config_file.write_text(
        config_file.read_text()
        + '  packed2:\n    - devices: [0]\n      mig-enabled: true\n      mig-devices: {"1c.3g.20gb": 1, "2c.3g.20gb": 1, "1g.5gb": 3}\n'
        + "    - devices: [1]\n      mig-enabled: false\n"
    )
    assert main(["apply", "-c", "packed2"]) == 0
    assert three <= _mig_uuids()
    assert main(["restore", "-f", str(cp)]) == 0
    assert three <= _mig_uuids()
    assert len(_mig_uuids()) == 5  # 2 + 2 + 1 on GPU 0


def test_a_gpu_instance_without_compute_instances_comes_back(tmp_path, monkeypatch, capsys):
    _node(tmp_path, monkeypatch)
    assert main(["apply", "-c", "other"]) == 0  # 2g.10gb x3 at memory slices 0, 2, 4
    backend = SimBackend()
    one_g = next(p for p in backend.model_of(0).gi_profiles if p.name == "1g.5gb")
    backend.create_gpu_instance(0, one_g.nvml_id, 6)  # by hand, no CI in it
    backend.close()
    saved = _layout()
    cp = tmp_path / "cp.json"
    assert main(["checkpoint", "-f", str(cp)]) == 0
    assert main(["apply", "-c", "packed"]) == 0
    assert _layout() != saved
    assert main(["restore", "-f", str(cp)]) == 0
    assert _layout() == saved


def test_nvidia_mig_parted_checkpoint_and_restore(tmp_path, monkeypatch, capsys):
    """The peer's command line: the same commands and flags, exit 1 for every failure."""
    from migmanagerd.cli.peer import main as peer_main

    _node(tmp_path, monkeypatch)
    assert main(["apply", "-c", "packed"]) == 0
    saved = _layout()
    cp = tmp_path / "cp.json"
    assert peer_main(["checkpoint", "-f", str(cp)]) == 0
    assert main(["apply", "-c", "other"]) == 0
    assert peer_main(["-d", "restore", "-f", str(cp)]) == 0
    assert _layout() == saved
    (tmp_path / "bad.json").write_text("{")
    assert peer_main(["restore", "-f", str(tmp_path / "bad.json")]) == 1
