"""`migmanagerd apply` is the boot-time run by hand: hooks, state.json, the selection persisted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from node_root import sim_node_root

from migmanagerd.cli.main import main
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.selector import read_selector
from migmanagerd.service.state import StateStore

pytestmark = pytest.mark.usefixtures("both_backends")  # sim, and NVML through the stand-in


def _node(tmp_path, monkeypatch) -> tuple[NodePaths, Path]:
    paths = sim_node_root(tmp_path, monkeypatch)
    trail = tmp_path / "hooks.log"
    hooks = "version: v1\nhooks:\n" + "".join(
        f"  {h}:\n  - command: /bin/sh\n    args: [-c, 'echo {h} $MIG_PARTED_SELECTED_CONFIG $MIGMANAGERD_GPUS >> {trail}']\n"
        for h in ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit")
    )
    paths.hooks_file.write_text(hooks)
    return paths, trail


def test_apply_runs_the_hooks_and_persists_the_selection(tmp_path, monkeypatch, capsys):
    paths, trail = _node(tmp_path, monkeypatch)
    assert main(["apply", "-c", "all-balanced"]) == 0
    out = capsys.readouterr().out
    assert "GPU 0: applied" in out and "GPU 1: applied" in out
    assert trail.read_text().splitlines() == [
        "apply-start all-balanced 0,1",
        "pre-apply-mode all-balanced 0,1",
        "pre-apply-config all-balanced 0,1",
        "apply-exit all-balanced 0,1",
    ]
    # the next boot applies it again: the drop-in names it, state.json records it
    assert read_selector(paths.dropin).selected_config == "all-balanced"
    assert StateStore(paths).load().state.last_run.result == "ok"

    trail.unlink()
    assert main(["apply"]) == 0  # no -c: the selection recorded by the last run
    assert "already applied" in capsys.readouterr().out
    assert not trail.exists(), "no hook runs when nothing must change"


def test_apply_without_c_does_not_touch_the_selection(tmp_path, monkeypatch, capsys):
    paths, _ = _node(tmp_path, monkeypatch)
    monkeypatch.setenv("MIG_PARTED_SELECTED_CONFIG", "all-1g.5gb")
    assert main(["apply"]) == 0
    assert not paths.dropin.exists()


def test_apply_json_has_the_run_result_and_per_gpu_results(tmp_path, monkeypatch, capsys):
    _node(tmp_path, monkeypatch)
    assert main(["apply", "-c", "all-3g.20gb", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"config", "exit_code", "result", "message", "gpus"} <= set(doc)
    assert doc["config"] == "all-3g.20gb" and doc["result"] == "ok"
    assert [g["status"] for g in doc["gpus"]] == ["applied", "applied"]
    assert doc["gpus"][0]["operations"]["set_mode"] == 1
    assert doc["gpus"][0]["operations"]["create_gi"] == 2


def test_a_mode_result_is_not_hidden_by_an_unchanged_geometry_result(tmp_path, monkeypatch, capsys):
    _node(tmp_path, monkeypatch)
    assert main(["apply", "-c", "all-3g.20gb"]) == 0
    capsys.readouterr()
    # MIG off: the geometry phase has no device to make, the mode phase's result stands
    assert main(["apply", "-c", "all-disabled", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(g["index"], g["status"]) for g in doc["gpus"]] == [(0, "applied"), (1, "applied")]
    # one record per GPU for the whole apply: destroys and the mode switch together
    assert doc["gpus"][0]["operations"] == {"destroy_ci": 2, "destroy_gi": 2, "set_mode": 1, "reset": 1}
