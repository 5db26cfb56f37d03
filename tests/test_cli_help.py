"""The help the CLI ships: every command answers --help, every option explains itself,
and the man page and bash completion rendered from the parser cover all of it."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from migmanagerd import __version__
from migmanagerd.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"


# tools/ is a directory of scripts, not a package: import them the way they import each other.
sys.path.insert(0, str(TOOLS))
try:
    import cli_model
    import gen_completion
    import gen_manpage
finally:
    sys.path.remove(str(TOOLS))

CLI = cli_model.read_cli()
SUBCOMMANDS = [c for c in CLI.walk() if c.path]


def _id(cmd) -> str:
    return " ".join(cmd.path) or "migmanagerd"


def _help_of(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    return exc.value.code, out.getvalue() + err.getvalue()


# ---- the real CLI -------------------------------------------------------------------------


def test_the_cli_has_commands():
    assert SUBCOMMANDS, "build_parser() registered no subcommand (no migmanagerd/cli/cmd_*.py landed?)"


def test_top_level_help_exits_0_and_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "migmanagerd", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for cmd in CLI.subcommands:
        assert cmd.name in proc.stdout


def test_version_prints_package_version():
    proc = subprocess.run([sys.executable, "-m", "migmanagerd", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"migmanagerd {__version__}"


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=_id)
def test_every_subcommand_help_exits_0(cmd):
    code, text = _help_of([*cmd.path, "--help"])
    assert code == 0, text
    assert "usage: migmanagerd " + " ".join(cmd.path) in " ".join(text.split())


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=_id)
def test_every_subcommand_has_help_text(cmd):
    assert cmd.help, f"'migmanagerd {_id(cmd)}' was registered without help= (it shows blank in --help)"


@pytest.mark.parametrize("cmd", list(CLI.walk()), ids=_id)
def test_every_option_has_help_text(cmd):
    missing = [o.flags[0] if o.flags else o.dest for o in cmd.options if not o.help.strip()]
    assert not missing, f"'migmanagerd {_id(cmd)}': no help text for {missing}"


def test_no_command_is_missing_from_the_model():
    """The model walks argparse internals; prove it sees what argparse itself lists."""
    def names(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return set(action.choices)
        return set()

    parser = build_parser()
    assert {n for c in CLI.subcommands for n in (c.name, *c.aliases)} == names(parser)


# ---- the generators, on the real CLI ------------------------------------------------------


@pytest.fixture(scope="module")
def manpage() -> str:
    return gen_manpage.render_manpage(CLI, __version__, "2026-01-01")


def test_manpage_documents_every_command_and_option(manpage):
    for cmd in SUBCOMMANDS:
        assert f'.SS "migmanagerd {" ".join(cmd.path)}"' in manpage
        for opt in cmd.options:
            for flag in opt.flags:
                assert gen_manpage.flag(flag) in manpage, (cmd.path, flag)


def test_manpage_has_the_required_sections(manpage):
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "FILES", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"):
        assert f"\n.SH {section}\n" in manpage
    environment = manpage.split(".SH ENVIRONMENT")[1].split(".SH EXIT STATUS")[0]
    for name in ("MIG_PARTED_CONFIG_FILE", "MIG_PARTED_SELECTED_CONFIG", "MIGMANAGERD_BACKEND"):
        assert gen_manpage.flag(name) in environment
    exit_status = manpage.split(".SH EXIT STATUS")[1]
    for code in "012":
        assert f".TP\n\\fB{code}\\fR\n" in exit_status
    assert f'"migmanagerd {__version__}"' in manpage


def test_manpage_lists_environment_variables_read_anywhere_in_the_package(manpage, tmp_path):
    pkg = tmp_path / "migmanagerd"
    pkg.mkdir()
    (pkg / "x.py").write_text('import os\nos.environ.get("MIGMANAGERD_NEW_KNOB")\n')
    text = gen_manpage.render_manpage(CLI, __version__, "2026-01-01", package_dir=pkg)
    assert "\\fBMIGMANAGERD_NEW_KNOB\\fR\nRead by migmanagerd/x.py." in text


# what `man` typesets for a UTF-8, a Latin-1 and a C locale
GROFF_DEVICES = ("utf8", "latin1", "ascii")


def groff_warnings(page: str, device: str) -> str:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (apt-get install groff-base)")
    proc = subprocess.run(["groff", "-man", f"-T{device}", "-ww", "-z"], input=page, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("device", GROFF_DEVICES)
def test_manpage_typesets_without_warnings(manpage, device):
    assert groff_warnings(manpage, device) == ""


@pytest.mark.parametrize("device", GROFF_DEVICES)
def test_manpage_writes_characters_troff_lacks_as_ascii(device):
    """An ellipsis (as in a metavar "OP=S,\u2026") has no glyph on the latin1 and ascii
    devices: troff warns "can't find special character 'u2026'" and drops it."""
    p = argparse.ArgumentParser(prog="migmanagerd", description="top")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("sim", help="simulated node \u2014 dashes \u2013 and \u201cquotes\u201d \u2192 kept")
    c.add_argument("--latency", metavar="OP=S,\u2026", help="seconds\u00a0per operation\u2026")
    text = gen_manpage.render_manpage(cli_model.read_command(p), "9.9", "2026-01-01", package_dir=Path("/nonexistent"))
    assert "\u2026" not in text and "u2026" not in text
    assert "OP=S,..." in text
    assert groff_warnings(text, device) == ""


def _complete(script: str, words: list[str], env: dict[str, str] | None = None) -> list[str]:
    """Run the completion function as bash would for `words` (the last one is being typed)."""
    driver = 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _migmanagerd; printf "%s\\n" "${COMPREPLY[@]}"'
    proc = subprocess.run(
        ["bash", "-c", driver, "bash", script, *words],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.split("\n") if w]


@pytest.fixture(scope="module")
def real_completion(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("completion") / "migmanagerd"
    path.write_text(gen_completion.render_completion(CLI))
    return str(path)


def test_completion_offers_every_command(real_completion):
    assert set(_complete(real_completion, ["migmanagerd", ""])) == {
        n for c in CLI.subcommands for n in (c.name, *c.aliases)
    }


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=_id)
def test_completion_offers_every_option_of_every_command(real_completion, cmd):
    offered = set(_complete(real_completion, ["migmanagerd", *cmd.path, "-"]))
    assert {f for o in cmd.options for f in o.flags} <= offered


# ---- the generators, on a parser with every shape they must handle ------------------------


def _shapes_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="migmanagerd", description="Keep MIG layouts.")
    p.add_argument("--version", action="version", version="x")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    a = sub.add_parser("apply", help="apply a config")
    a.add_argument("-f", "--config-file", help="config file (env MIG_PARTED_CONFIG_FILE)")
    a.add_argument("-c", "--selected-config", help="config name")
    a.add_argument("--backend", choices=("nvml", "sim"), default="nvml", help="backend (default %(default)s)")
    a.add_argument("-d", "--debug", action="store_true", help=".starts with a dot \\ and a backslash")
    s = sub.add_parser("select", aliases=["sel"], help="select a config")
    s.add_argument("name", help="config name")
    sim = sub.add_parser("sim", help="simulated node")
    simsub = sim.add_subparsers(dest="sim_command")
    c = simsub.add_parser("create", help="create a node")
    c.add_argument("--state-file", help="where the node lives")
    c.add_argument("--node", help="node shape")
    return p


SHAPES = cli_model.read_command(_shapes_parser())


def test_model_reads_nested_commands_aliases_choices_and_defaults():
    by_path = {c.path: c for c in SHAPES.walk()}
    assert set(by_path) == {(), ("apply",), ("select",), ("sim",), ("sim", "create")}
    assert by_path[("select",)].aliases == ("sel",)
    backend = next(o for o in by_path[("apply",)].options if o.dest == "backend")
    assert backend.choices == ("nvml", "sim") and backend.help == "backend (default nvml)"
    name = next(o for o in by_path[("select",)].options if o.positional)
    assert name.dest == "name" and name.required
    assert by_path[("apply",)].env_names() == {"MIG_PARTED_CONFIG_FILE"}


def test_manpage_escapes_roff_and_documents_nested_commands():
    text = gen_manpage.render_manpage(SHAPES, "9.9", "2026-01-01", package_dir=Path("/nonexistent"))
    assert '.SS "migmanagerd sim create"' in text
    assert "\\&.starts with a dot \\e and a backslash" in text
    assert "Also called \\fBsel\\fR." in text
    assert "\\fB\\-\\-state\\-file\\fR \\fISTATE_FILE\\fR" in text
    # an env var named only in an option's help is listed, pointing at the command
    assert "\\fBMIG_PARTED_CONFIG_FILE\\fR" in text.split(".SH ENVIRONMENT")[1]


@pytest.fixture(scope="module")
def shapes_completion(tmp_path_factory) -> tuple[str, Path]:
    d = tmp_path_factory.mktemp("shapes")
    script = d / "migmanagerd"
    script.write_text(gen_completion.render_completion(SHAPES))
    config = d / "cfg.yaml"
    config.write_text(
        "version: v1\n"
        "mig-configs:\n"
        "  all-disabled:\n"
        "    - devices: all\n"
        "      mig-enabled: false\n"
        "  # a comment\n"
        '  "all-1g.5gb":\n'
        "    - devices: all\n"
        "      mig-devices:\n"
        '        "1g.5gb": 7\n'
        "other:\n"
        "  not-a-config: 1\n"
    )
    return str(script), config


def test_completion_commands_options_and_choices(shapes_completion):
    script, _ = shapes_completion
    assert _complete(script, ["migmanagerd", "s"]) == ["select", "sel", "sim"]
    assert _complete(script, ["migmanagerd", "sim", ""]) == ["create"]
    assert _complete(script, ["migmanagerd", "sim", "create", "--n"]) == ["--node"]
    assert _complete(script, ["migmanagerd", "apply", "--backend", ""]) == ["nvml", "sim"]
    assert _complete(script, ["migmanagerd", "apply", "--backend", "=", "s"]) == ["sim"]
    # an option's value is not mistaken for a command
    assert _complete(script, ["migmanagerd", "apply", "-c", "sim", "--d"]) == ["--debug"]


def test_completion_config_names_come_from_the_config_file_in_use(shapes_completion):
    script, config = shapes_completion
    names = ["all-disabled", "all-1g.5gb"]
    assert _complete(script, ["migmanagerd", "apply", "-f", str(config), "-c", ""]) == names
    assert _complete(script, ["migmanagerd", "sel", "all-1"], env={"MIG_PARTED_CONFIG_FILE": str(config)}) == ["all-1g.5gb"]
    assert _complete(script, ["migmanagerd", "select", ""], env={"MIG_PARTED_CONFIG_FILE": "/nonexistent"}) == []


def test_completion_file_options_complete_paths(shapes_completion):
    script, config = shapes_completion
    assert _complete(script, ["migmanagerd", "sim", "create", "--state-file", str(config)[:-4]]) == [str(config)]
