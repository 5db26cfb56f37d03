"""apply / assert / plan / export / generate-config through the CLI, on a simulated node."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from apply_helpers import (
    BACKEND,
    DEFAULT_CONFIG,
    UNFILTERED_CONFIG,
    catalog,
    default_configs,
    engine,
    layout,
    multiset,
    nvml_clients_dir,
    ops,
    sim_node,
    use_backend_env,
)

from migmanagerd.cli.main import main
from migmanagerd.spec.config import parse_config

CFG = str(DEFAULT_CONFIG)
pytestmark = pytest.mark.usefixtures("both_backends")  # the CLI on sim, and on NVML through the stand-in


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A 2xA100 + 1xA30 simulated node the CLI finds through the environment."""
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB,1xA30-24GB", backend="sim")  # the test's view: no NVML session
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(backend.state_path))
    use_backend_env(monkeypatch)
    for var in ("MIG_PARTED_SELECTED_CONFIG", "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_MODE_CHANGE_ONLY",
                "MIG_PARTED_SKIP_RESET", "MIG_PARTED_OUTPUT_FORMAT"):
        monkeypatch.delenv(var, raising=False)
    return backend


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_apply_then_assert_then_apply_again_does_nothing(node, capsys):
    code, out, _ = run(capsys, "apply", "-f", CFG, "-c", "all-balanced")
    assert code == 0
    assert "GPU 0: applied" in out and "GPU 2: applied" in out
    assert nvml_clients_dir(node).exists() == (BACKEND[0] == "nvml")  # the NVML run went through the stand-in
    assert run(capsys, "assert", "-f", CFG, "-c", "all-balanced")[0] == 0
    before = ops(node)
    code, out, _ = run(capsys, "apply", "-f", CFG, "-c", "all-balanced")
    assert code == 0 and "already applied" in out
    assert ops(node) == before


def test_assert_prints_what_differs_and_exits_1(node, capsys):
    code, out, _ = run(capsys, "assert", "-f", CFG, "-c", "all-balanced")
    assert code == 1
    assert "GPU 0: MIG mode is disabled, config 'all-balanced' wants enabled" in out
    assert "GPU 2: MIG mode is disabled, config 'all-balanced' wants enabled" in out
    assert run(capsys, "assert", "-f", CFG, "-c", "all-balanced", "--valid-config")[0] == 0


def test_mode_only_flags(node, capsys):
    assert run(capsys, "apply", "-f", CFG, "-c", "all-balanced", "--mode-only")[0] == 0
    assert run(capsys, "assert", "-f", CFG, "-c", "all-balanced", "-m")[0] == 0
    assert run(capsys, "assert", "-f", CFG, "-c", "all-balanced")[0] == 1
    assert "create_gi" not in ops(node)


def test_skip_reset_leaves_the_mode_pending(node, capsys):
    # as nvidia-mig-parted: the requested change is done, the reset is the operator's
    code, out, _ = run(capsys, "apply", "-f", CFG, "-c", "all-enabled", "--skip-reset")
    assert code == 0
    assert "GPU 0: mode-pending" in out and "--skip-reset" in out
    assert "reset" not in ops(node)


def test_selection_precedence(node, capsys, monkeypatch):
    monkeypatch.setenv("MIG_PARTED_SELECTED_CONFIG", "all-enabled")
    monkeypatch.setenv("MIG_PARTED_CONFIG_FILE", CFG)
    code, out, _ = run(capsys, "plan")
    assert code == 0 and out.startswith("config 'all-enabled':")
    code, out, _ = run(capsys, "plan", "-c", "all-disabled")
    assert out.startswith("config 'all-disabled':")


def test_unknown_config_is_exit_2_listing_the_names(node, capsys):
    code, out, err = run(capsys, "apply", "-f", CFG, "-c", "no-such")
    assert code == 2
    assert "config 'no-such' not found" in err
    assert "all-balanced" in err and "all-disabled" in err
    assert ops(node) == {}


def test_no_selection_is_exit_2(node, capsys):
    code, _, err = run(capsys, "apply", "-f", CFG)
    assert code == 2
    assert "no config selected" in err and "MIG_PARTED_SELECTED_CONFIG" in err


def test_single_config_file_needs_no_selection(node, capsys, tmp_path):
    f = tmp_path / "one.yaml"
    f.write_text("version: v1\nmig-configs:\n  only:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {}\n")
    assert run(capsys, "apply", "-f", str(f))[0] == 0
    assert all(v[:2] == (True, True) for v in layout(node).values())


def test_config_from_stdin(node, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(DEFAULT_CONFIG.read_text()))
    code, out, _ = run(capsys, "plan", "-f", "-", "-c", "all-enabled")
    assert code == 0 and "config 'all-enabled'" in out


def test_bad_config_file_is_exit_2_with_location(node, capsys, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("version: v1\nmig-configs:\n  x:\n    - devices: all\n      mig-enabled: maybe\n")
    code, _, err = run(capsys, "apply", "-f", str(f), "-c", "x")
    assert code == 2
    assert f"{f}:5:" in err
    assert "Traceback" not in err


def test_config_that_does_not_fit_is_exit_2_and_touches_nothing(node, capsys):
    code, _, err = run(capsys, "apply", "-f", str(UNFILTERED_CONFIG), "-c", "all-1g.5gb")
    assert code == 2
    assert "config 'all-1g.5gb' does not fit" in err
    assert "GPU 2 (A30-24GB)" in err and "1g.5gb" in err
    assert ops(node) == {}


PLAN_KEYS = {"config", "feasible", "gpus", "errors"}
PLAN_GPU_KEYS = {"index", "model", "mode", "keep", "destroy", "create", "adjust"}
DEVICE_KEYS = {"profile", "start", "size"}


def test_plan_json_keys(node, capsys):
    assert run(capsys, "apply", "-f", CFG, "-c", "all-balanced")[0] == 0
    code, out, _ = run(capsys, "plan", "-f", CFG, "-c", "all-disabled", "--json")
    doc = json.loads(out)
    assert code == 0
    assert set(doc) == PLAN_KEYS
    assert doc["config"] == "all-disabled" and doc["feasible"] is True and doc["errors"] == []
    assert [g["index"] for g in doc["gpus"]] == [0, 1, 2]
    for g in doc["gpus"]:
        assert set(g) == PLAN_GPU_KEYS
        assert g["mode"] == {"current": True, "target": False}
        assert g["create"] == [] and g["keep"] == []
        for d in g["destroy"]:
            assert set(d) == DEVICE_KEYS | {"uuid"}
            assert d["uuid"].startswith("MIG-")
    assert doc["gpus"][0]["model"] == "A100-SXM4-40GB"
    assert Counter(d["profile"] for d in doc["gpus"][0]["destroy"]) == Counter({"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1})


def test_plan_json_for_a_config_that_does_not_fit(node, capsys):
    code, out, _ = run(capsys, "plan", "-f", str(UNFILTERED_CONFIG), "-c", "all-1g.5gb", "--json")
    doc = json.loads(out)
    assert code == 2
    assert doc["feasible"] is False
    assert len(doc["errors"]) == 1 and doc["errors"][0].startswith("GPU 2 (A30-24GB): ")
    a100 = doc["gpus"][0]
    assert [set(c) for c in a100["create"]] == [DEVICE_KEYS] * 7
    assert sorted(c["start"] for c in a100["create"]) == list(range(7))


EXPORT_GPU_KEYS = {"index", "uuid", "model", "device_id", "mig_enabled", "mig_pending", "instances"}


def test_export_json_keys(node, capsys):
    run(capsys, "apply", "-f", CFG, "-c", "all-balanced")
    code, out, _ = run(capsys, "export", "--json")
    doc = json.loads(out)
    assert code == 0 and set(doc) == {"gpus"}
    for g in doc["gpus"]:
        assert set(g) == EXPORT_GPU_KEYS
        assert g["mig_enabled"] is True and g["mig_pending"] is True
        for inst in g["instances"]:
            assert set(inst) == {"profile", "start", "size", "uuid"}
    assert doc["gpus"][0]["device_id"] == "0x20B010DE"
    assert doc["gpus"][2]["device_id"] == "0x20B710DE"
    assert doc["gpus"][2]["model"] == "A30-24GB"
    assert Counter(i["profile"] for i in doc["gpus"][2]["instances"]) == Counter({"1g.6gb": 2, "2g.12gb": 1})
    assert run(capsys, "export", "-o", "json")[1] == out


def test_export_yaml_reproduces_the_layout_on_another_node(node, capsys, tmp_path, monkeypatch):
    run(capsys, "apply", "-f", CFG, "-c", "all-balanced")
    code, out, _ = run(capsys, "export")
    assert code == 0
    exported = parse_config(out, "exported.yaml")
    assert list(exported.configs) == ["current"]
    entries = exported.configs["current"].entries
    # the two identical A100s share one entry, the A30 has its own
    assert [e.devices for e in entries] == [(0, 1), (2,)]
    f = tmp_path / "exported.yaml"
    f.write_text(out)
    other = sim_node(tmp_path, "2xA100-SXM4-40GB,1xA30-24GB", name="other.json", backend="sim")
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(other.state_path))
    assert run(capsys, "apply", "-f", str(f), "-c", "current")[0] == 0
    assert {i: multiset(v) for i, v in layout(other).items()} == {i: multiset(v) for i, v in layout(node).items()}


def test_export_label(node, capsys):
    code, out, _ = run(capsys, "export", "-l", "snapshot")
    assert code == 0 and list(parse_config(out, "x").configs) == ["snapshot"]


def _nvidia_balanced(model_pci: int):
    for e in default_configs().configs["all-balanced"].entries:
        if any(f.device_id == model_pci for f in e.device_filters):
            return sorted((str(p), n) for p, n in e.mig_devices)
    raise AssertionError(hex(model_pci))


def test_generate_config_reparses_and_every_config_fits(node, capsys, tmp_path):
    code, out, _ = run(capsys, "generate-config")
    assert code == 0
    generated = parse_config(out, "generated.yaml")
    names = list(generated.configs)
    assert names[:2] == ["all-disabled", "all-enabled"] and names[-1] == "all-balanced"
    assert {"all-1g.5gb", "all-1g.5gb.me", "all-7g.40gb", "all-1g.6gb", "all-2g.12gb.me", "all-4g.24gb"} <= set(names)
    eng = engine(node)
    state = eng.observe()
    for name, cfg in generated.configs.items():
        plan = eng.plan(cfg, state=state)
        assert plan.feasible, (name, plan.errors)
        assert plan.selected_gpus, name
    # all-balanced is NVIDIA's on these models
    bal = generated.configs["all-balanced"]
    for entry in bal.entries:
        pci = entry.device_filters[0].device_id
        assert sorted((str(p), n) for p, n in entry.mig_devices) == _nvidia_balanced(pci)
    # and it applies
    f = tmp_path / "gen.yaml"
    f.write_text(out)
    assert run(capsys, "apply", "-f", str(f), "-c", "all-1g.5gb.me")[0] == 0


def test_generate_config_for_named_models_and_json(capsys, tmp_path):
    out_file = tmp_path / "g.yaml"
    code, _, _ = run(capsys, "generate-config", "--model", "H100-80GB", "--model", "A30-24GB", "-f", str(out_file))
    assert code == 0
    generated = parse_config(out_file.read_text(), str(out_file))
    by_name = generated.configs
    h100 = catalog().get("H100-80GB")
    # 1g.10gb x7 on H100 (as NVIDIA ships it)
    entry = by_name["all-1g.10gb"].entries[0]
    assert entry.device_filters[0].device_id in h100.pci_ids
    assert [(str(p), n) for p, n in entry.mig_devices] == [("1g.10gb", 7)]
    code, out, _ = run(capsys, "generate-config", "--model", "A30-24GB", "-o", "json")
    doc = json.loads(out)
    assert doc["version"] == "v1" and "all-balanced" in doc["mig-configs"]
    assert run(capsys, "generate-config", "--model", "nope")[0] == 2


@pytest.mark.parametrize("cmd", [["apply", "-c", "x"], ["assert", "-c", "x"], ["plan", "-c", "x"], ["export"], ["generate-config"]])
def test_bad_backend_name_is_exit_2(capsys, cmd):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--backend", "bogus"])
    assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_apply_with_an_injected_fault_says_which_gpu_was_rolled_back(node, capsys, monkeypatch):
    from apply_helpers import shape

    from migmanagerd.gpu.sim_faults import PROCESS_FAULTS

    assert run(capsys, "apply", "-f", CFG, "-c", "all-balanced")[0] == 0
    before = layout(node)
    PROCESS_FAULTS.reset()
    monkeypatch.setenv("MIGMANAGERD_SIM_FAULTS", "set_mode@1:1")
    code, out, _ = run(capsys, "apply", "-f", CFG, "-c", "all-disabled", "--json")
    assert code == 1
    doc = json.loads(out)
    assert set(doc) >= {"config", "exit_code", "gpus"} and doc["exit_code"] == 1
    by_index = {g["index"]: g for g in doc["gpus"]}
    assert set(by_index[1]) == {"index", "status", "operations", "error", "rollback_error", "kept_uuids"}
    assert [by_index[i]["status"] for i in (0, 1, 2)] == ["applied", "rolled-back", "applied"]
    assert "set" in by_index[1]["error"] or "MIG mode" in by_index[1]["error"]
    assert shape(layout(node)[1]) == shape(before[1])
    monkeypatch.delenv("MIGMANAGERD_SIM_FAULTS")
    code, out, _ = run(capsys, "apply", "-f", CFG, "-c", "all-disabled")
    assert code == 0 and "GPU 1: applied" in out and "GPU 0" not in out


def test_generated_config_for_every_catalog_model_passes_validate(capsys, tmp_path):
    out_file = tmp_path / "all.yaml"
    models = [a for name in catalog().names for a in ("--model", name)]
    code, _, err = run(capsys, "generate-config", *models, "-f", str(out_file))
    assert code == 0
    code, _, verr = run(capsys, "validate", "-f", str(out_file))
    assert code == 0, verr
    generated = parse_config(out_file.read_text(), str(out_file))
    # one all-balanced entry per model with known PCI ids, each filtered to them
    # (a model without PCI ids cannot be filtered for: it is left out, with a
    # warning; the shipped catalog has none since GB200-189GB went)
    entries = generated.configs["all-balanced"].entries
    with_ids = [m for m in catalog().models if m.pci_ids]
    assert len(entries) == len(with_ids)
    assert all(e.device_filters for e in entries)
    assert ("has no known PCI device id" in err) == (len(with_ids) < len(catalog().models))


def test_identical_gpus_that_do_not_fit_share_one_reason(tmp_path, monkeypatch, capsys):
    backend = sim_node(tmp_path, "3xA100-SXM4-40GB", backend="sim")
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(backend.state_path))
    use_backend_env(monkeypatch)
    f = tmp_path / "c.yaml"
    f.write_text('version: v1\nmig-configs:\n  big:\n    - devices: all\n      mig-enabled: true\n'
                 '      mig-devices:\n        "3g.20gb": 3\n')
    code, _, err = run(capsys, "apply", "-f", str(f), "-c", "big")
    assert code == 2
    assert "GPUs 0, 1, 2 (A100-SXM4-40GB): 3g.20gb x3 requested" in err
    assert err.count("allows at most 2") == 1
