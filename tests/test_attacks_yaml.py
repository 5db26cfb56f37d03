"""Attacks through YAML (issue 14 items 7 and 16, issue 12 item 4): alias
bombs, deep nesting, recursive anchors and bad merge keys in each of the four
operator files are refused with file:line:col and exit 2 before anything
runs; tab-indented JSON loads. Each case ran for minutes, exhausted memory or
printed a traceback before the bounded composer (spec/source.py)."""

from __future__ import annotations

import json
import re

import pytest
from harden_support import alias_bomb, make_node, write

from migmanagerd.errors import SpecError
from migmanagerd.spec.source import load_yaml_text

# the bounds (spec/source.py MAX_DEPTH, MAX_EXPANDED_NODES), spelled out so
# that this file also runs, and fails, against the code before them
MAX_DEPTH = 64
MAX_EXPANDED_NODES = 100_000

HOOKS_OK = "version: v1\nhooks: {}\n"


def _bomb_in(file_name: str) -> str:
    """The file, valid up to the bomb, which sits under a key the file's
    schema does not know (it must be refused for the bomb, not the key)."""
    heads = {
        "config.yaml": "version: v1\n",
        "hooks.yaml": "version: v1\n",
        "clients.yaml": "version: v1\n",
        "integrations.yaml": "version: v1\n",
    }
    return heads[file_name] + alias_bomb()


@pytest.mark.parametrize("file_name", ["config.yaml", "hooks.yaml", "clients.yaml", "integrations.yaml"])
def test_alias_bomb_is_refused_at_its_line(tmp_path, monkeypatch, file_name):
    node = make_node(tmp_path, monkeypatch)
    target = write(node.etc / file_name, _bomb_in(file_name))
    before = (tmp_path / "sim.json").read_bytes()
    proc = node.run("service", "-c", "all-balanced")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected error" not in proc.stderr
    # the line of the alias that crosses the bound, not line 0 or the key check
    assert re.search(rf"{re.escape(str(target))}:\d+:\d+: more than {MAX_EXPANDED_NODES} values", proc.stderr), proc.stderr
    assert (tmp_path / "sim.json").read_bytes() == before, "nothing on the node may change"


def test_alias_bomb_through_validate(tmp_path, monkeypatch):
    node = make_node(tmp_path, monkeypatch)
    f = write(tmp_path / "c.yaml", "version: v1\n" + alias_bomb(levels=7))
    proc = node.run("validate", "-f", str(f))
    assert proc.returncode == 2 and f"{f}:" in proc.stderr and "aliases are expanded" in proc.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("version: v1\nmig-configs: " + "[" * 5000 + "]" * 5000 + "\n", f"nested more than {MAX_DEPTH} levels deep"),
        ("version: v1\nmig-configs: &a {x: [*a]}\n", "recursive anchor"),
        ("version: v1\nmig-configs: &a [*a]\n", "recursive anchor"),
        ("version: v1\n<<: 5\nmig-configs: {}\n", "a merge key '<<' takes a mapping"),
    ],
    ids=["deep-nesting", "recursive-map", "recursive-seq", "merge-scalar"],
)
@pytest.mark.parametrize("command", ["service", "validate"])
def test_hostile_structure_is_exit_2_with_location(tmp_path, monkeypatch, text, message, command):
    node = make_node(tmp_path, monkeypatch)
    config = write(node.etc / "config.yaml", text)
    args = ["service", "-c", "x"] if command == "service" else ["validate", "-f", str(config)]
    proc = node.run(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected error" not in proc.stderr
    assert re.search(rf"{re.escape(str(config))}:\d+:\d+: .*{re.escape(message)}", proc.stderr), proc.stderr


def test_nesting_through_aliases_is_bounded():
    levels = ["a0: &a0 x"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, MAX_DEPTH + 2)]
    with pytest.raises(SpecError, match=r"f.yaml:\d+:\d+: nested more than .* \(through aliases\)"):
        load_yaml_text("\n".join(levels) + "\n", "f.yaml")


def test_merge_keys_follow_yaml():
    root = load_yaml_text("b1: &b1 {x: 1, y: 1}\nb2: &b2 {x: 2, z: 2}\nd:\n  <<: [*b1, *b2]\n  y: 3\n", "f.yaml")
    d = root.value["d"].value
    assert {k: v.value for k, v in d.items()} == {"x": 1, "y": 3, "z": 2}
    quoted = load_yaml_text('"<<": 5\n', "f.yaml")  # a quoted '<<' is an ordinary key
    assert quoted.value["<<"].value == 5


def _tab_json(doc: object) -> str:
    return json.dumps(doc, indent="\t") + "\n"


def test_tab_indented_json_config_and_hooks_load(tmp_path, monkeypatch):
    """`jq --tab` output (issue 12 item 4): rejected by PyYAML's pure-Python
    scanner ("found character '\\t' that cannot start any token")."""
    node = make_node(tmp_path, monkeypatch)
    trail = tmp_path / "trail"
    config = {"version": "v1", "mig-configs": {"tabbed": [
        {"devices": "all", "mig-enabled": True, "mig-devices": {"3g.20gb": 2}}]}}
    hooks = {"version": "v1", "hooks": {"apply-start": [
        {"command": "/bin/sh", "args": ["-c", f"echo started > {trail}"]}]}}
    write(node.etc / "config.yaml", _tab_json(config))
    write(node.etc / "hooks.yaml", _tab_json(hooks))
    proc = node.run("validate", "-f", str(node.etc / "config.yaml"))
    assert proc.returncode == 0, proc.stderr
    proc = node.run("service", "-c", "tabbed")
    assert proc.returncode == 0, proc.stderr
    assert trail.read_text() == "started\n"


def test_flow_yaml_with_tabs_loads():
    root = load_yaml_text("{version: v1,\n\thooks: {\n\t\tapply-start: []}}\n", "h.yaml")
    assert root.value["hooks"].value["apply-start"].value == []
