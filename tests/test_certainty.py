"""validate and plan say when a layout rests on catalog rows flagged `confirmed: false`."""

from __future__ import annotations

import pytest
from apply_helpers import catalog, sim_node

from migmanagerd.cli.main import main
from migmanagerd.planner.certainty import inferred_profiles

CONFIG = """version: v1
mig-configs:
  all-3g.90gb:
    - devices: all
      mig-enabled: true
      mig-devices: {"3g.90gb": 2}
  all-3g.20gb:
    - devices: all
      mig-enabled: true
      mig-devices: {"3g.20gb": 2}
  mixed:
    - device-filter: ["0x20B010DE"]
      devices: all
      mig-enabled: true
      mig-devices: {"3g.20gb": 1, "4g.20gb": 1}
    - device-filter: ["0x290110DE"]
      devices: all
      mig-enabled: true
      mig-devices: {"1g.23gb": 2, "2g.45gb": 1, "3g.90gb": 1}
"""


@pytest.fixture
def cfg(tmp_path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return str(path)


def test_inferred_profiles_of_a_model():
    b200, a100 = catalog().find("B200"), catalog().find("A100-SXM4-40GB")
    assert not b200.gi_profile("3g.90gb").confirmed
    assert inferred_profiles(b200, ["3g.90gb", "1c.3g.90gb", "3g.90gb"]) == ("3g.90gb",)
    assert inferred_profiles(a100, ["3g.20gb", "1g.5gb"]) == ()


def test_validate_with_gpu_says_the_fit_rests_on_unconfirmed_placements(capsys, cfg):
    assert main(["validate", "-f", cfg, "--gpu", "B200", "-c", "all-3g.90gb"]) == 0
    out = capsys.readouterr().out
    assert "fits" in out and "unconfirmed placements (catalog confirmed: false): 3g.90gb" in out
    assert main(["validate", "-f", cfg, "--gpu", "A100-SXM4-40GB", "-c", "all-3g.20gb"]) == 0
    assert "unconfirmed" not in capsys.readouterr().out


def test_validate_notes_each_entry_and_model(capsys, cfg):
    assert main(["validate", "-f", cfg, "-c", "all-3g.90gb"]) == 0
    out = capsys.readouterr().out.splitlines()
    notes = [line for line in out if line.startswith("note: ")]
    assert notes and all("(B200)" in n and "3g.90gb" in n and "confirmed: false" in n for n in notes)
    assert main(["validate", "-f", cfg, "-c", "all-3g.20gb"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert all("(A100-SXM4-40GB)" not in n for n in notes)


def test_plan_notes_gpus_whose_layout_rests_on_unconfirmed_placements(tmp_path, monkeypatch, capsys, cfg):
    node = sim_node(tmp_path, "1xA100-SXM4-40GB,1xB200", backend="sim")
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(node.state_path))
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "sim")
    monkeypatch.delenv("MIG_PARTED_SELECTED_CONFIG", raising=False)
    assert main(["plan", "-f", cfg, "-c", "mixed"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and notes[0].startswith("note: GPU 1 (B200) rests on placements") and "3g.90gb" in notes[0]
