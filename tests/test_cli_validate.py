"""``migmanagerd validate``: exit codes, messages, the fit table, NVIDIA's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vectors import VECTORS, needs_vectors

from migmanagerd.cli.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["validate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


GOOD = """\
version: v1
mig-configs:
  disabled:
    - devices: all
      mig-enabled: false
  balanced:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 2
        "2g.10gb": 1
        "3g.20gb": 1
  big:
    - devices: all
      mig-enabled: true
      mig-devices:
        "3g.40gb": 2
  h100-only:
    - device-filter: "0x233010DE"
      devices: all
      mig-enabled: true
      mig-devices:
        "1g.10gb": 7
"""


@needs_vectors
@pytest.mark.parametrize("name", ["config-default.yaml", "examples-config.yaml", "dgx-station-80gb-config.yaml"])
def test_nvidia_configs_validate(capsys, name):
    rc, out, err = run(capsys, "-f", str(VECTORS / name))
    assert (rc, err) == (0, "")
    assert "valid" in out


@needs_vectors
@pytest.mark.parametrize("hooks", ["hooks-default.yaml", "hooks-minimal.yaml"])
def test_nvidia_hooks_validate(capsys, hooks):
    rc, out, err = run(capsys, "-f", str(VECTORS / "config-default.yaml"), "-k", str(VECTORS / hooks))
    assert (rc, err) == (0, "")
    assert f"{hooks}: valid" in out


def test_good_file_validates(capsys, tmp_path):
    rc, out, _ = run(capsys, "-f", write(tmp_path, GOOD))
    assert rc == 0 and "4 configs valid" in out


def test_entry_no_model_can_hold_is_exit_2_with_location(capsys, tmp_path):
    text = GOOD + """\
  too-many:
    - devices: all
      mig-enabled: true
      mig-devices:
        "3g.20gb": 3
  unknown-profile:
    - devices: all
      mig-enabled: true
      mig-devices:
        "5g.33gb": 1
  unknown-filter:
    - device-filter: "0xABCD10DE"
      devices: all
      mig-enabled: true
      mig-devices: {}
"""
    path = write(tmp_path, text)
    rc, out, err = run(capsys, "-f", path)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert f"{path}:25:7: config 'too-many' entry 0: fits no GPU model" in lines[0]
    assert "3g.20gb x3 requested, A100-SXM4-40GB allows at most 2" in lines[0]
    assert "config 'unknown-profile' entry 0" in lines[1] and "no catalog model has all of 5g.33gb" in lines[1]
    assert "config 'unknown-filter' entry 0" in lines[2] and "0xABCD10DE" in lines[2]


def test_filtered_entry_uses_only_admitted_models(capsys, tmp_path):
    # 1g.10gb x7 fits H100 but the filter only admits A100-40GB (where 1g.10gb max is 4)
    text = GOOD.replace('"0x233010DE"', '"0x20B010DE"')
    rc, _, err = run(capsys, "-f", write(tmp_path, text))
    assert rc == 2
    assert "config 'h100-only' entry 0" in err and "1g.10gb x7 requested, A100-SXM4-40GB allows at most 4" in err


def test_syntax_error_is_exit_2(capsys, tmp_path):
    rc, out, err = run(capsys, "-f", write(tmp_path, "version: v1\nmig-configs:\n  x: [\n"))
    assert rc == 2 and out == ""
    assert "config.yaml:" in err and "YAML syntax error" in err


def test_bad_hooks_file_is_exit_2(capsys, tmp_path):
    hooks = write(tmp_path, "version: v1\nhooks:\n  not-a-hook: []\n", "hooks.yaml")
    rc, _, err = run(capsys, "-f", write(tmp_path, GOOD), "-k", hooks)
    assert rc == 2 and "hooks.yaml:3" in err


def test_table_for_a_model(capsys, tmp_path):
    rc, out, _ = run(capsys, "-f", write(tmp_path, GOOD), "--gpu", "a100-sxm4-40gb")
    assert rc == 0
    rows = {line.split()[0]: line for line in out.strip().splitlines()}
    assert rows["CONFIG"].split() == ["CONFIG", "MODEL", "FITS", "REASON"]
    assert rows["disabled"].split()[1:] == ["A100-SXM4-40GB", "fits"]
    assert rows["balanced"].split()[2] == "fits"
    assert rows["big"].split()[2] == "no" and "profile 3g.40gb does not exist on A100-SXM4-40GB" in rows["big"]
    assert rows["h100-only"].split()[2] == "n/a"


def test_table_json_for_two_models(capsys, tmp_path):
    rc, out, _ = run(capsys, "-f", write(tmp_path, GOOD), "--gpu", "0x20B0", "--gpu", "H100-80GB", "--json")
    assert rc == 0
    data = json.loads(out)
    got = {(d["config"], d["model"]): d["status"] for d in data}
    assert got[("big", "H100-80GB")] == "fits"
    assert got[("big", "A100-SXM4-40GB")] == "no"
    assert got[("h100-only", "H100-80GB")] == "fits"
    assert set(data[0]) == {"config", "model", "status", "reason"}


@pytest.mark.parametrize(
    "gpu, name, code",
    [
        ("A100-SXM4-40GB", "balanced", 0),
        ("0x20B010DE", "big", 1),
        ("H100-80GB", "big", 0),
        ("A100-SXM4-40GB", "h100-only", 1),
    ],
)
def test_single_config_exit_codes(capsys, tmp_path, gpu, name, code):
    rc, out, _ = run(capsys, "-f", write(tmp_path, GOOD), "--gpu", gpu, "-c", name)
    assert rc == code
    if code == 1:
        assert "no" in out.split() or "n/a" in out.split()


def test_unknown_model_lists_known_ones(capsys, tmp_path):
    rc, out, err = run(capsys, "-f", write(tmp_path, GOOD), "--gpu", "V100", "-c", "balanced")
    assert rc == 2 and out == ""
    assert "--gpu V100: unknown GPU model" in err and "A100-SXM4-40GB" in err and "H100-80GB" in err


def test_unknown_config_name_is_exit_2(capsys, tmp_path):
    rc, _, err = run(capsys, "-f", write(tmp_path, GOOD), "--gpu", "A30", "-c", "nope")
    assert rc == 2 and "config 'nope' not found" in err and "balanced" in err


def test_missing_file_is_exit_2(capsys, tmp_path):
    rc, _, err = run(capsys, "-f", str(tmp_path / "absent.yaml"))
    assert rc == 2 and "absent.yaml" in err and "not found" in err


@needs_vectors
def test_config_default_fit_for_every_model_has_a_verdict(capsys):
    # Every named config either fits, does not fit with a reason, or does not apply.
    rc, out, _ = run(capsys, "-f", str(VECTORS / "config-default.yaml"), "--gpu", "B200", "--json")
    data = json.loads(out)
    assert rc == 0 and len(data) == 81
    by = {d["config"]: d for d in data}
    assert by["all-balanced"]["status"] == "fits"
    assert by["all-3g.90gb"]["status"] == "fits"
    assert by["all-1g.5gb"]["status"] == "no" and by["all-1g.5gb"]["reason"]


def test_list_models(capsys):
    rc = main(["validate", "--list-models"])
    out = capsys.readouterr().out
    assert rc == 0 and "A100-SXM4-40GB" in out and "0x20B0" in out


def test_single_config_without_gpu(capsys, tmp_path):
    text = GOOD + """\
  too-many:
    - devices: all
      mig-enabled: true
      mig-devices:
        "3g.20gb": 3
"""
    path = write(tmp_path, text)
    rc, out, _ = run(capsys, "-f", path, "-c", "balanced")
    assert rc == 0 and "config 'balanced' valid" in out
    rc, out, err = run(capsys, "-f", path, "-c", "too-many")
    assert rc == 2 and out == "" and "config 'too-many' entry 0" in err
