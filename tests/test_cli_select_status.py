"""`select` persists only a config that exists and fits; `status` says where the selection comes from."""

from __future__ import annotations

import json

from node_root import sim_node_root

from migmanagerd.cli.main import main
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.selector import read_selector
from migmanagerd.service.state import StateStore

STATUS_KEYS = {"selection", "matches", "differences", "gpus", "last_run", "journal", "reboot_guard",
               "integrations", "problems", "leases", "busy_devices"}


def _node(tmp_path, monkeypatch) -> NodePaths:
    too_big = '  too-big:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n        "3g.20gb": 3\n'
    return sim_node_root(tmp_path, monkeypatch, extra_config=too_big)


def test_select_refuses_an_unknown_or_unfitting_config_and_writes_nothing(tmp_path, monkeypatch, capsys):
    paths = _node(tmp_path, monkeypatch)
    assert main(["select", "no-such"]) == 2
    assert "config 'no-such' not found" in capsys.readouterr().err
    assert main(["select", "too-big"]) == 2
    assert "3g.20gb x3 requested" in capsys.readouterr().err
    assert main(["select", 'bad"name']) == 2
    assert not paths.dropin.exists()
    assert StateStore(paths).load().state.selected_config is None


def test_select_writes_the_dropin_and_status_names_it_as_the_source(tmp_path, monkeypatch, capsys):
    paths = _node(tmp_path, monkeypatch)
    assert main(["select", "all-balanced"]) == 0
    assert read_selector(paths.dropin).selected_config == "all-balanced"
    capsys.readouterr()

    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == STATUS_KEYS
    assert doc["selection"] == {"config": "all-balanced", "source": f"drop-in {paths.dropin}",
                                "config_file": str(paths.config_file)}
    assert doc["matches"] is False and len(doc["differences"]) == 2
    assert [g["mig_enabled"] for g in doc["gpus"]] == [False, False]

    assert main(["apply"]) == 0  # no -c, no environment: the selection `select` recorded
    capsys.readouterr()
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "Selected config: all-balanced" in text and "Node matches:    yes" in text
    assert "Last run:        ok (exit 0) config 'all-balanced'" in text


def test_the_environment_wins_over_the_dropin(tmp_path, monkeypatch, capsys):
    _node(tmp_path, monkeypatch)
    assert main(["select", "all-balanced"]) == 0
    monkeypatch.setenv("MIG_PARTED_SELECTED_CONFIG", "all-disabled")
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["selection"]["config"] == "all-disabled"
    assert doc["selection"]["source"].startswith("environment")
    assert doc["matches"] is True
