"""`nvidia-mig-parted`, run as nvidia-mig-parted's README shows it, on a
simulated 2-GPU A100-40GB node: the same commands, flags, variables and
outputs that scripts rely on, and exit status 1 for every failure."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from migmanagerd.cli.peer import main as peer
from migmanagerd.gpu.sim import init_node
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.selector import read_selector
from migmanagerd.spec.config import parse_config

# Written for these tests after the shape of the peer README's example file
# (its all-* configs, a balanced one, and a custom one for an 8-GPU node).
EXAMPLES = """\
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-enabled:
    - devices: all
      mig-enabled: true
      mig-devices: {}
  all-1g.5gb:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 7
  all-2g.10gb:
    - devices: all
      mig-enabled: true
      mig-devices:
        "2g.10gb": 3
  all-3g.20gb:
    - devices: all
      mig-enabled: true
      mig-devices:
        "3g.20gb": 2
  all-balanced:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 2
        "2g.10gb": 1
        "3g.20gb": 1
  custom-config:
    - devices: [0, 1, 2, 3]
      mig-enabled: false
    - devices: [4]
      mig-enabled: true
      mig-devices:
        "1g.5gb": 7
    - devices: [5]
      mig-enabled: true
      mig-devices:
        "2g.10gb": 3
    - devices: [6]
      mig-enabled: true
      mig-devices:
        "3g.20gb": 2
    - devices: [7]
      mig-enabled: true
      mig-devices:
        "1g.5gb": 2
        "2g.10gb": 1
        "3g.20gb": 1
"""

ONE_OFF_1G = """\
version: v1
mig-configs:
  all-1g.5gb:
  - devices: all
    mig-enabled: true
    mig-devices:
      1g.5gb: 7
"""

ONE_OFF_MODE = """\
version: v1
mig-configs:
  whatever:
  - devices: all
    mig-enabled: true
    mig-devices: {}
"""


@pytest.fixture
def examples(tmp_path, monkeypatch) -> str:
    root = tmp_path / "root"
    etc = root / "etc" / "nvidia-mig-manager"
    etc.mkdir(parents=True)
    for d in (root, root / "etc", etc):
        d.chmod(0o755)
    (etc / "config.yaml").write_text("version: v1\nmig-configs:\n  boot:\n    - devices: all\n      mig-enabled: false\n")
    ex = tmp_path / "examples"
    ex.mkdir(mode=0o755)
    ex.chmod(0o755)
    (ex / "config.yaml").write_text(EXAMPLES)
    state = tmp_path / "sim.json"
    init_node(state, "2xA100-SXM4-40GB")
    monkeypatch.setenv("MIGMANAGERD_ROOT", str(root))
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "sim")
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(state))
    for var in ("MIG_PARTED_SELECTED_CONFIG", "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_HOOKS_FILE", "MIG_PARTED_DEBUG",
                "MIG_PARTED_MODE_CHANGE_ONLY", "MIG_PARTED_OUTPUT_FORMAT", "MIG_PARTED_CONFIG_LABEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return "examples/config.yaml"


def layout(capsys) -> list[list[str]]:
    assert peer(["export", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    out = []
    for entry in doc["mig-configs"]["current"]:
        out.append((entry["devices"], entry["mig-enabled"], entry.get("mig-devices")))
    return out


def test_apply_each_example_config_in_turn(examples, capsys):
    for name in ("all-disabled", "all-1g.5gb", "all-2g.10gb", "all-3g.20gb", "all-balanced", "custom-config"):
        assert peer(["apply", "-f", examples, "-c", name]) == 0, name
        capsys.readouterr()
        assert peer(["assert", "-f", examples, "-c", name]) == 0, name
        capsys.readouterr()
    # custom-config names GPUs 0-7; this node has 0 and 1: both MIG off
    assert layout(capsys) == [("all", False, None)]


def test_export_then_assert_as_in_the_readme(examples, capsys):
    assert peer(["apply", "-f", examples, "-c", "all-balanced"]) == 0
    capsys.readouterr()
    assert peer(["export"]) == 0
    text = capsys.readouterr().out
    cfg = parse_config(text, "export").configs["current"]
    (entry,) = cfg.entries
    assert entry.devices == "all" and entry.mig_enabled
    assert {str(p): n for p, n in entry.mig_devices} == {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}

    assert peer(["assert", "-f", examples, "-c", "all-balanced"]) == 0
    assert peer(["assert", "-f", examples, "-c", "all-1g.5gb"]) == 1
    assert peer(["assert", "--mode-only", "-f", examples, "-c", "all-1g.5gb"]) == 0


def test_export_json_is_the_config_in_json_like_the_peer(examples, capsys):
    assert peer(["apply", "-f", examples, "-c", "all-2g.10gb"]) == 0
    capsys.readouterr()
    assert peer(["export", "-o", "json", "-l", "mine"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"version": "v1", "mig-configs": {"mine": [
        {"devices": "all", "mig-enabled": True, "mig-devices": {"2g.10gb": 3}}]}}


def test_debug_before_the_command_and_mode_only(examples, capsys):
    assert peer(["-d", "apply", "-f", examples, "-c", "all-1g.5gb"]) == 0
    assert peer(["apply", "--mode-only", "-f", examples, "-c", "all-disabled"]) == 0
    capsys.readouterr()
    assert layout(capsys) == [("all", False, None)]


def test_one_off_configs_on_stdin(examples, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(ONE_OFF_1G))
    assert peer(["apply", "-f", "-"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(ONE_OFF_1G))
    assert peer(["assert", "-f", "-"]) == 0
    capsys.readouterr()
    assert layout(capsys) == [("all", True, {"1g.5gb": 7})]
    monkeypatch.setattr("sys.stdin", io.StringIO(ONE_OFF_MODE))
    assert peer(["apply", "--mode-only", "-f", "-"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(ONE_OFF_MODE))
    assert peer(["assert", "--mode-only", "-f", "-"]) == 0


def test_apply_does_not_change_the_boot_selection(examples, capsys):
    assert peer(["apply", "-f", examples, "-c", "all-1g.5gb"]) == 0
    assert read_selector(NodePaths.from_env().dropin).selected_config is None


@pytest.mark.parametrize("argv", [
    ["apply", "-f", "examples/config.yaml", "-c", "no-such-config"],  # migmanagerd: 2
    ["apply", "-f", "examples/missing.yaml", "-c", "x"],               # migmanagerd: 2
    ["apply", "--no-such-flag"],                                       # argparse: 2
    ["no-such-command"],
    ["export", "-o", "xml"],
])
def test_every_failure_is_exit_1(examples, capsys, argv):
    assert peer(argv) == 1


def test_bad_boolean_variable_is_exit_1(examples, monkeypatch):
    monkeypatch.setenv("MIG_PARTED_SKIP_RESET", "yes")
    assert peer(["apply", "-f", "examples/config.yaml", "-c", "all-disabled"]) == 1


def test_installed_entry_point_runs(examples, capsys):
    exe = Path(sys.executable).with_name("nvidia-mig-parted")
    if not exe.exists():
        pytest.skip(f"{exe} not installed: run `make deps` (pip install -e .)")
    env = {**os.environ}
    proc = subprocess.run([str(exe), "assert", "-f", examples, "-c", "all-1g.5gb"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stderr
    proc = subprocess.run([str(exe), "-v"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("nvidia-mig-parted (migmanagerd) ")


# --- the peer's export shape, pure -------------------------------------------------------

A100 = 0x20B010DE
H100 = 0x233010DE


def _entry(devices, f, enabled, devs=()):
    from migmanagerd.apply.configtext import EntryText

    return EntryText(devices=tuple(devices), device_filters=(f,), mig_enabled=enabled, mig_devices=tuple(devs))


def _shape(*entries):
    from migmanagerd.apply.configtext import ConfigText
    from migmanagerd.apply.export_peer import peer_shape

    return [(e.devices, e.device_filters, e.mig_enabled, e.mig_devices) for e in peer_shape(ConfigText("current", entries)).entries]


def test_peer_shape_uniform_node_is_devices_all_without_filter():
    assert _shape(_entry([0, 1], A100, True, [("1g.5gb", 7)])) == [("all", (), True, (("1g.5gb", 7),))]


def test_peer_shape_two_layouts_on_one_model_keep_indices_and_drop_the_filter():
    assert _shape(_entry([0], A100, True, [("1g.5gb", 7)]), _entry([1], A100, False)) == [
        ((0,), (), True, (("1g.5gb", 7),)), ((1,), (), False, ())]


def test_peer_shape_mixed_models_merge_equal_layouts_and_keep_filters():
    got = _shape(_entry([0, 1], A100, False), _entry([2], H100, False), _entry([3], H100, True, [("7g.80gb", 1)]))
    # GPU 3 (H100) differs, so the MIG-off entry does not cover every GPU of its filters
    assert got == [((0, 1, 2), (A100, H100), False, ()), ((3,), (H100,), True, (("7g.80gb", 1),))]
    assert _shape(_entry([0, 1], A100, False), _entry([2], H100, False)) == [("all", (), False, ())]
