"""`select` refuses what the next boot would refuse, keeps the drop-in's files,
refuses a config that selects no GPU of this node, and proves over D-Bus that
systemd took the selection (issue 12 items 6, 7; issue 14 items 13, 15)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from migmanagerd.cli.main import main
from migmanagerd.gpu.sim import init_node
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.selector import read_selector

BASE = """\
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-balanced:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 2
        "2g.10gb": 1
        "3g.20gb": 1
  all-1g.20gb:
    - device-filter: ["0x20B210DE", "0x20B510DE"]
      devices: all
      mig-enabled: true
      mig-devices:
        "1g.20gb": 4
"""

CUSTOM = """\
version: v1
mig-configs:
  all-balanced:
    - devices: all
      mig-enabled: true
      mig-devices:
        "3g.20gb": 2
  site-layout:
    - devices: all
      mig-enabled: true
      mig-devices:
        "2g.10gb": 3
"""

HOOKS = "version: v1\nhooks: {}\n"


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


@pytest.fixture
def node(tmp_path, monkeypatch) -> NodePaths:
    root = _dir(tmp_path / "root")
    etc = _dir(root / "etc" / "nvidia-mig-manager")
    _dir(root / "etc")
    (etc / "config.yaml").write_text(BASE)
    site = _dir(tmp_path / "site")
    (site / "custom.yaml").write_text(CUSTOM)
    (site / "hooks.yaml").write_text(HOOKS)
    state = tmp_path / "sim.json"
    init_node(state, "2xA100-SXM4-40GB")
    monkeypatch.setenv("MIGMANAGERD_ROOT", str(root))
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "sim")
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(state))
    for var in ("MIG_PARTED_SELECTED_CONFIG", "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_HOOKS_FILE"):
        monkeypatch.delenv(var, raising=False)
    return NodePaths.from_env()


def site(node: NodePaths, name: str) -> str:
    return str(Path(os.environ["MIGMANAGERD_ROOT"]).parent / "site" / name)


# --- 14.13: what the boot would refuse ---------------------------------------------------


def test_missing_hooks_file_is_refused_and_nothing_written(node, capsys):
    assert main(["select", "all-balanced", "-k", site(node, "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert not node.dropin.exists()


def test_untrusted_config_file_is_refused(node, capsys):
    Path(site(node, "custom.yaml")).chmod(0o666)
    assert main(["select", "site-layout", "-f", site(node, "custom.yaml")]) == 2
    assert "writable" in capsys.readouterr().err
    assert not node.dropin.exists()


def test_invalid_hooks_file_is_refused(node, capsys):
    Path(site(node, "hooks.yaml")).write_text("version: v1\nhooks: [\n")
    assert main(["select", "all-balanced", "-k", site(node, "hooks.yaml")]) == 2
    assert "hooks.yaml:" in capsys.readouterr().err
    assert not node.dropin.exists()


def test_stdin_cannot_be_selected(node, capsys):
    assert main(["select", "all-balanced", "-f", "-"]) == 2
    assert "standard input" in capsys.readouterr().err


# --- 12.6: select -f/-k kept ------------------------------------------------------------


def test_select_f_and_k_are_written_and_kept_by_the_next_select(node, capsys):
    assert main(["select", "site-layout", "-f", site(node, "custom.yaml"), "-k", site(node, "hooks.yaml")]) == 0
    s = read_selector(node.dropin)
    assert (s.selected_config, s.config_file, s.hooks_file) == ("site-layout", site(node, "custom.yaml"), site(node, "hooks.yaml"))
    # a plain select picks the name from the file the drop-in names, and keeps both lines
    assert main(["select", "all-balanced"]) == 0
    s = read_selector(node.dropin)
    assert (s.selected_config, s.config_file, s.hooks_file) == ("all-balanced", site(node, "custom.yaml"), site(node, "hooks.yaml"))
    # a name only the default file has is not found in the kept file
    assert main(["select", "all-disabled"]) == 2
    assert "config 'all-disabled' not found" in capsys.readouterr().err


# --- 12.7: a config that selects no GPU of this node -------------------------------------------


def test_config_for_other_models_is_refused_naming_both_sides(node, capsys):
    assert main(["select", "all-1g.20gb"]) == 2
    err = capsys.readouterr().err
    assert "config 'all-1g.20gb' selects no GPU of this node" in err
    assert "A100-SXM4-80GB" in err and "A100-SXM4-40GB (GPUs 0, 1)" in err
    assert not node.dropin.exists()


def test_the_service_refuses_it_too_and_touches_nothing(node, capsys):
    assert main(["service", "-c", "all-1g.20gb"]) == 2
    assert "selects no GPU of this node" in capsys.readouterr().err
    assert main(["export", "--json"]) == 0
    assert [g["mig_enabled"] for g in json.loads(capsys.readouterr().out)["gpus"]] == [False, False]


# --- 14.15: confirmed through D-Bus on a real manager -----------------------------------------

UNIT_TEXT = "[Service]\nType=oneshot\nExecStart=/bin/true\nRemainAfterExit=yes\n"


def _on_real_manager(node, systemd_user, monkeypatch) -> Path:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", systemd_user.env["DBUS_SYSTEM_BUS_ADDRESS"])
    systemd_user.write_unit("nvidia-mig-manager.service", UNIT_TEXT)
    dropin = systemd_user.unit_dir / "nvidia-mig-manager.service.d" / "override.conf"
    monkeypatch.setenv("MIGMANAGERD_DROPIN", str(dropin))
    systemd_user.daemon_reload()
    return dropin


def test_select_reloads_and_the_unit_holds_the_selection(node, systemd_user, monkeypatch, capsys):
    _on_real_manager(node, systemd_user, monkeypatch)
    assert main(["select", "site-layout", "-f", site(node, "custom.yaml")]) == 0
    env = systemd_user.prop("nvidia-mig-manager.service", "Environment")
    assert "MIG_PARTED_SELECTED_CONFIG=site-layout" in env
    assert f"MIG_PARTED_CONFIG_FILE={site(node, 'custom.yaml')}" in env
    assert "does not see" not in capsys.readouterr().err


def test_select_says_so_when_another_dropin_overrides_it(node, systemd_user, monkeypatch, capsys):
    _on_real_manager(node, systemd_user, monkeypatch)
    systemd_user.write_unit("nvidia-mig-manager.service.d/zz-site.conf",
                            "[Service]\nEnvironment=MIG_PARTED_SELECTED_CONFIG=all-disabled\n")
    systemd_user.daemon_reload()
    assert main(["select", "all-balanced"]) == 1
    err = capsys.readouterr().err
    assert "MIG_PARTED_SELECTED_CONFIG is 'all-disabled' in the unit, the drop-in sets 'all-balanced'" in err
    assert "systemd does not see this selection" in err


def test_select_notices_a_hand_edit_nobody_reloaded(node, systemd_user, monkeypatch, capsys):
    dropin = _on_real_manager(node, systemd_user, monkeypatch)
    assert main(["select", "all-balanced"]) == 0
    # active, so systemd keeps the unit loaded as it was (an unreferenced
    # inactive unit is reloaded from disk on the next lookup anyway)
    systemd_user.systemctl("start", "nvidia-mig-manager.service")
    # edited by hand, without daemon-reload: the file already says all-disabled, the unit does not
    dropin.write_text(dropin.read_text().replace("all-balanced", "all-disabled"))
    assert "MIG_PARTED_SELECTED_CONFIG=all-balanced" in systemd_user.prop("nvidia-mig-manager.service", "Environment")
    assert main(["select", "all-disabled"]) == 0
    assert "(unchanged)" in capsys.readouterr().out
    assert "MIG_PARTED_SELECTED_CONFIG=all-disabled" in systemd_user.prop("nvidia-mig-manager.service", "Environment")


# --- 12.6: every command works on the persisted selection and its file ------------------------


def _layout(capsys) -> list[list[str]]:
    assert main(["export", "--json"]) == 0
    return [sorted(i["profile"] for i in g["instances"]) for g in json.loads(capsys.readouterr().out)["gpus"]]


def test_select_f_then_the_unit_run_then_status_assert_plan(node, capsys, monkeypatch):
    custom = site(node, "custom.yaml")
    assert main(["select", "site-layout", "-f", custom]) == 0
    with monkeypatch.context() as unit:  # the unit: the drop-in's environment, `migmanagerd service`
        for key, value in read_selector(node.dropin).environment.items():
            unit.setenv(key, value)
        assert main(["service"]) == 0
    capsys.readouterr()
    assert _layout(capsys) == [["2g.10gb"] * 3] * 2

    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["selection"] == {"config": "site-layout", "source": f"drop-in {node.dropin}", "config_file": custom}
    assert doc["matches"] is True and doc["problems"] == []
    assert main(["assert"]) == 0  # no -c, no -f: the persisted selection, from the persisted file
    assert main(["plan"]) == 0
    assert "config 'site-layout'" in capsys.readouterr().out


def test_a_name_both_files_have_resolves_in_the_persisted_file(node, capsys):
    custom = site(node, "custom.yaml")
    assert main(["select", "all-balanced", "-f", custom]) == 0
    assert main(["apply"]) == 0  # custom.yaml's all-balanced is 3g.20gb x2, the default file's is mixed
    capsys.readouterr()
    assert _layout(capsys) == [["3g.20gb"] * 2] * 2
    assert main(["assert"]) == 0
    # another file: its own all-balanced differs; the persisted name is no fallback there
    assert main(["assert", "-f", str(node.config_file), "-c", "all-balanced"]) == 1
    assert main(["assert", "-f", str(node.config_file)]) == 2
    assert "no config selected" in capsys.readouterr().err


def test_status_reports_a_dropin_systemd_ignores(node, capsys):
    node.dropin.parent.mkdir(parents=True)
    node.dropin.write_text('[Service] # chosen by the fleet tool\nEnvironment="MIG_PARTED_SELECTED_CONFIG=all-balanced"\n')
    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["selection"]["config"] is None
    assert any("invalid section header" in p for p in doc["problems"])
