"""nvidia-mig-parted's command-line conventions, as its README and flag
library define them: global flags before the command, `help`, `-v`, Go-style
booleans in MIG_PARTED_* variables, known output formats only, configs on
standard input, profile names without surrounding spaces, and device indices a
node lacks skipped with a warning."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from migmanagerd import __version__
from migmanagerd.cli.main import main, parse_args
from migmanagerd.errors import SpecError
from migmanagerd.gpu.sim import init_node
from migmanagerd.service.paths import NodePaths
from migmanagerd.spec.config import load_config, load_config_stream, parse_config
from migmanagerd.spec.profile import MigProfile, ProfileNameError

CONFIG = """\
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-1g.5gb:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 7
  cluster-wide:
    - devices: [0, 1, 2, 3]
      mig-enabled: false
    - devices: [4, 5, 6, 7]
      mig-enabled: true
      mig-devices:
        "3g.20gb": 2
  two-of-eight:
    - devices: [0, 6, 7]
      mig-enabled: true
      mig-devices:
        "2g.10gb": 3
"""

ONE_OFF = """\
version: v1
mig-configs:
  one-off:
    - devices: all
      mig-enabled: true
      mig-devices:
        "2g.10gb": 3
"""


def node(tmp_path: Path, monkeypatch, spec: str = "2xA100-SXM4-40GB", config: str = CONFIG) -> NodePaths:
    root = tmp_path / "root"
    etc = root / "etc" / "nvidia-mig-manager"
    etc.mkdir(parents=True)
    for d in (root, root / "etc", etc):
        d.chmod(0o755)
    (etc / "config.yaml").write_text(config)
    state = tmp_path / "sim.json"
    init_node(state, spec)
    monkeypatch.setenv("MIGMANAGERD_ROOT", str(root))
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(state))
    monkeypatch.delenv("MIGMANAGERD_BACKEND", raising=False)
    for var in ("MIG_PARTED_SELECTED_CONFIG", "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_HOOKS_FILE",
                "MIG_PARTED_DEBUG", "MIG_PARTED_MODE_CHANGE_ONLY", "MIG_PARTED_OUTPUT_FORMAT"):
        monkeypatch.delenv(var, raising=False)
    return NodePaths.from_env()


def sim_profiles(capsys) -> list[list[str]]:
    assert main(["--backend", "sim", "export", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    return [sorted(i["profile"] for i in g["instances"]) for g in doc["gpus"]]


# --- 12.3 global flags ---------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["-d", "status"], ["--debug", "status"], ["status", "-d"],
])
def test_debug_before_or_after_the_command(argv):
    args = parse_args(argv)
    assert args.debug is True and args.command == "status"


def test_backend_before_the_command_reaches_the_command(tmp_path, monkeypatch, capsys):
    node(tmp_path, monkeypatch)
    assert parse_args(["--backend", "sim", "status"]).backend == "sim"
    assert main(["--backend", "sim", "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [g["model"] for g in doc["gpus"]] == ["A100-SXM4-40GB", "A100-SXM4-40GB"]


def test_debug_apply_as_the_peer_readme_writes_it(tmp_path, monkeypatch, capsys):
    node(tmp_path, monkeypatch)
    assert main(["-d", "--backend", "sim", "apply", "-c", "all-1g.5gb"]) == 0
    capsys.readouterr()
    assert sim_profiles(capsys) == [["1g.5gb"] * 7] * 2


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main([flag])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"migmanagerd {__version__}"


def test_help_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["help"])
    assert exc.value.code == 0
    assert "usage: migmanagerd" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["-d", "help", "apply"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: migmanagerd apply") and "--hooks-file" in out


# --- 12.8 booleans, output formats, profile names -------------------------------------------


@pytest.mark.parametrize("text, expect", [
    ("1", True), ("t", True), ("T", True), ("TRUE", True), ("true", True), ("True", True),
    ("0", False), ("f", False), ("F", False), ("FALSE", False), ("false", False), ("False", False),
    ("", False),
])
def test_go_booleans_in_the_environment(monkeypatch, text, expect):
    monkeypatch.setenv("MIG_PARTED_MODE_CHANGE_ONLY", text)
    monkeypatch.setenv("MIG_PARTED_SKIP_RESET", text)
    args = parse_args(["apply", "-c", "x"])
    assert args.mode_only is expect and args.skip_reset is expect


@pytest.mark.parametrize("text", ["yes", "on", "tRUE", " true", "2", "y"])
def test_anything_else_is_an_error_of_the_command_that_reads_it(tmp_path, monkeypatch, capsys, text):
    node(tmp_path, monkeypatch)
    monkeypatch.setenv("MIG_PARTED_MODE_CHANGE_ONLY", text)
    assert main(["--backend", "sim", "assert", "-c", "all-disabled"]) == 2
    err = capsys.readouterr().err
    assert "MIG_PARTED_MODE_CHANGE_ONLY" in err and repr(text) in err
    # export has no --mode-only, so the variable does not concern it
    assert main(["--backend", "sim", "export"]) == 0


def test_flag_given_wins_over_a_bad_variable(monkeypatch):
    monkeypatch.setenv("MIG_PARTED_DEBUG", "bogus")
    assert parse_args(["status", "--debug"]).debug is True


def test_mode_change_only_t_is_true(tmp_path, monkeypatch, capsys):
    node(tmp_path, monkeypatch)
    monkeypatch.setenv("MIG_PARTED_MODE_CHANGE_ONLY", "t")
    assert main(["--backend", "sim", "apply", "-c", "all-1g.5gb"]) == 0
    capsys.readouterr()
    assert sim_profiles(capsys) == [[], []]  # mode only: MIG on, no devices


def test_unknown_output_format_is_rejected(tmp_path, monkeypatch, capsys):
    node(tmp_path, monkeypatch)
    monkeypatch.setenv("MIG_PARTED_OUTPUT_FORMAT", "xml")
    with pytest.raises(SystemExit) as exc:
        main(["--backend", "sim", "export"])
    assert exc.value.code == 2
    assert "'xml' is not an output format" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--backend", "sim", "export", "-o", "toml"])
    assert exc.value.code == 2
    monkeypatch.setenv("MIG_PARTED_OUTPUT_FORMAT", "json")
    assert main(["--backend", "sim", "export"]) == 0
    assert "gpus" in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", [" 1g.5gb", "1g.5gb ", "\t3g.20gb"])
def test_profile_names_with_surrounding_spaces_are_rejected(name):
    with pytest.raises(ProfileNameError, match="whitespace"):
        MigProfile.parse(name)
    text = f'version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n      mig-devices:\n        "{name}": 1\n'
    with pytest.raises(SpecError) as exc:
        parse_config(text, "c.yaml")
    assert str(exc.value).startswith("c.yaml:7:")


# --- 12.2 standard input -------------------------------------------------------------


def test_spec_layer_reads_a_stream_and_names_it_in_errors():
    cfg = load_config_stream(io.StringIO(ONE_OFF))
    assert cfg.path == "<stdin>" and list(cfg.configs) == ["one-off"]
    bad = ONE_OFF.replace('"2g.10gb": 3', '"2g.10gb": many')
    with pytest.raises(SpecError) as exc:
        load_config_stream(io.StringIO(bad))
    assert str(exc.value).startswith("<stdin>:7:")


def test_load_config_dash_reads_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(ONE_OFF))
    assert list(load_config("-").configs) == ["one-off"]


def test_validate_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(ONE_OFF))
    assert main(["validate", "-f", "-"]) == 0
    assert "<stdin>" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("version: v1\nmig-configs: [\n"))
    assert main(["validate", "-f", "-"]) == 2
    assert "<stdin>:" in capsys.readouterr().err


# --- 12.5 device indices the node lacks ------------------------------------------------------


def test_cluster_config_with_indices_0_to_7_on_a_2_gpu_node(tmp_path, monkeypatch, capsys):
    node(tmp_path, monkeypatch)
    assert main(["--backend", "sim", "apply", "-c", "two-of-eight"]) == 0
    err = capsys.readouterr().err
    assert "GPU indexes 6, 7 not on this node" in err and "two-of-eight" in err
    assert sim_profiles(capsys) == [["2g.10gb"] * 3, []]
    assert main(["--backend", "sim", "assert", "-c", "two-of-eight"]) == 0


def test_validate_gpu_count(tmp_path, monkeypatch, capsys):
    node(tmp_path, monkeypatch)
    path = str(NodePaths.from_env().config_file)
    assert main(["validate", "-f", path, "--gpu-count", "8"]) == 0
    capsys.readouterr()
    assert main(["validate", "-f", path, "--gpu-count", "2"]) == 2
    err = capsys.readouterr().err
    assert "config 'cluster-wide' entry 0: devices: GPU indexes 2, 3 not on a node with 2 GPU(s)" in err
    assert "config 'cluster-wide' entry 1: devices: GPU indexes 4, 5, 6, 7" in err
    assert "config 'two-of-eight' entry 0: devices: GPU indexes 6, 7" in err
    assert main(["validate", "-f", path, "--gpu-count", "2", "-c", "all-1g.5gb"]) == 0
