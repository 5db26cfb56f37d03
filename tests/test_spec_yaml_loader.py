"""The YAML composer over libyaml's events and, where libyaml is absent, over
PyYAML's pure-Python parser: the same nodes, locations and bounds."""

from __future__ import annotations

import pytest
import yaml

from migmanagerd.errors import SpecError
from migmanagerd.spec import source
from migmanagerd.spec.source import MAX_DEPTH, MAX_EXPANDED_NODES, load_yaml_text

LOADERS = [pytest.param(yaml.SafeLoader, id="pure-python")]
if hasattr(yaml, "CSafeLoader"):
    LOADERS.append(pytest.param(yaml.CSafeLoader, id="libyaml"))


@pytest.fixture(params=LOADERS)
def loader(request, monkeypatch):
    monkeypatch.setattr(source, "_Loader", request.param)
    return request.param


def _plain(node):
    if node.kind == "map":
        return {k: _plain(v) for k, v in node.value.items()}
    if node.kind == "seq":
        return [_plain(v) for v in node.value]
    return node.value


def test_values_and_locations(loader):
    root = load_yaml_text("a: 1\nb: [x, 'y', 2.5, true, ~]\noff: 0x20\n", "f.yaml")
    assert _plain(root) == {"a": 1, "b": ["x", "y", 2.5, True, None], "off": 32}
    assert str(root.value["b"].value[1].loc) == "f.yaml:2:8"
    assert str(root.key_locs["off"]) == "f.yaml:3:1"


def test_bounds(loader):
    with pytest.raises(SpecError, match=f"nested more than {MAX_DEPTH}"):
        load_yaml_text("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "f.yaml")
    load_yaml_text("[" * MAX_DEPTH + "]" * MAX_DEPTH, "f.yaml")  # exactly the bound is fine
    bomb = "a: &a [" + ", ".join(["x"] * 100) + "]\nb: &b [" + ", ".join(["*a"] * 100) + "]\nc: [" + \
        ", ".join(["*b"] * 11) + "]\n"
    with pytest.raises(SpecError, match=f"f.yaml:3:\\d+: more than {MAX_EXPANDED_NODES} values"):
        load_yaml_text(bomb, "f.yaml")


def test_errors_keep_their_location(loader):
    with pytest.raises(SpecError, match=r"f.yaml:2:1: duplicate key 'a' \(first defined at line 1\)"):
        load_yaml_text("a: 1\na: 2\n", "f.yaml")
    with pytest.raises(SpecError, match=r"f.yaml:2:\d+: YAML syntax error"):
        load_yaml_text("a: [1,\n", "f.yaml")
    with pytest.raises(SpecError, match="f.yaml:1:1: file is empty"):
        load_yaml_text("# nothing\n", "f.yaml")
    with pytest.raises(SpecError, match="single document"):
        load_yaml_text("a: 1\n---\nb: 2\n", "f.yaml")
    with pytest.raises(SpecError, match="mapping keys must be plain scalars"):
        load_yaml_text("? [a]\n: 1\n", "f.yaml")


def test_python_tags_are_refused(loader):
    with pytest.raises(SpecError, match="f.yaml:1:4: unsupported tag 'tag:yaml.org,2002:python/object/apply:os.system'"):
        load_yaml_text("a: !!python/object/apply:os.system [id]\n", "f.yaml")
    with pytest.raises(SpecError, match="could not determine a constructor"):
        load_yaml_text("a: !!python/name:os.system x\n", "f.yaml")
    assert _plain(load_yaml_text("a: !!map {b: !!seq [1]}\n", "f.yaml")) == {"a": {"b": [1]}}
