"""hooks.yaml validation: every rule, valid and invalid, with exact locations."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from migmanagerd.errors import SpecError
from migmanagerd.spec.hooks import load_hooks, parse_hooks


def parse(text: str):
    return parse_hooks(textwrap.dedent(text), "h.yaml")


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(text)
    return info.value


def where(exc: SpecError) -> tuple[int, int]:
    assert exc.location is not None and exc.location.file == "h.yaml"
    return exc.location.line, exc.location.column


def one_hook(body: str, name: str = "apply-start") -> str:
    """One hook under ``name``; its first key is at line 4, column 7."""
    lines = textwrap.dedent(body).strip("\n").splitlines()
    out = ["version: v1", "hooks:", f"  {name}:", f"    - {lines[0]}"]
    out += [f"      {line}" for line in lines[1:]]
    return "\n".join(out) + "\n"


def test_valid_hooks_file():
    hf = parse(
        """\
        version: v1
        hooks:
          apply-start:
            - command: /bin/bash
              args: ["-c", "echo $X"]
              envs: {X: "1", Y: ""}
              workdir: /etc/nvidia-mig-manager
          apply-exit:
            - command: /bin/true
            - command: /bin/false
              args: []
        """
    )
    assert hf.path == "h.yaml"
    (start,) = hf.get("apply-start")
    assert start.command == "/bin/bash" and start.args == ("-c", "echo $X")
    assert start.envs == {"X": "1", "Y": ""} and start.workdir == "/etc/nvidia-mig-manager"
    assert (start.loc.line, start.loc.column) == (4, 7)
    first, second = hf.get("apply-exit")
    assert (first.command, first.args, first.envs, first.workdir) == ("/bin/true", (), {}, None)
    assert second.command == "/bin/false"
    assert hf.get("pre-apply-mode") == ()


def test_empty_hooks_and_empty_lists_are_no_hooks():
    assert parse("version: v1\nhooks: {}\n").hooks == {}
    assert parse("version: v1\nhooks:\n  apply-exit: []\n").get("apply-exit") == ()


def test_load_hooks_reads_file(tmp_path):
    p = tmp_path / "hooks.yaml"
    p.write_text(one_hook("command: /bin/true"))
    assert load_hooks(p).get("apply-start")[0].command == "/bin/true"


def test_version_required_and_checked():
    e = error("hooks: {}\n")
    assert where(e) == (1, 1) and "missing required key 'version'" in e.message
    e = error("version: v3\nhooks: {}\n")
    assert where(e) == (1, 10) and "unsupported version 'v3'" in e.message


def test_hooks_key_required():
    e = error("version: v1\n")
    assert where(e) == (1, 1) and "missing required key 'hooks'" in e.message


def test_unknown_top_level_key():
    e = error("version: v1\nhooks: {}\nhook: {}\n")
    assert where(e) == (3, 1) and "unknown key 'hook'" in e.message


def test_hooks_not_a_mapping():
    e = error("version: v1\nhooks: [a]\n")
    assert where(e) == (2, 8) and e.field == "hooks" and "expected a mapping, got a list" in e.message


def test_unknown_hook_name_lists_allowed():
    e = error(one_hook("command: /bin/true", name="post-apply"))
    assert where(e) == (3, 3) and e.field == "hooks.post-apply"
    assert e.message == "unknown hook 'post-apply' (allowed: apply-start, pre-apply-mode, pre-apply-config, apply-exit)"


def test_hook_list_not_a_list():
    e = error("version: v1\nhooks:\n  apply-start:\n    command: /bin/true\n")
    assert where(e) == (4, 5) and e.context == "hook 'apply-start'" and "expected a list" in e.message


def test_hook_list_null():
    e = error("version: v1\nhooks:\n  apply-start:\n")
    assert e.context == "hook 'apply-start'" and "expected a list, got null" in e.message


def test_hook_not_a_mapping():
    e = error("version: v1\nhooks:\n  apply-exit:\n    - /bin/true\n")
    assert where(e) == (4, 7) and e.context == "hook apply-exit[0]" and "expected a mapping, got a string" in e.message


def test_command_required():
    e = error(one_hook("workdir: /tmp"))
    assert where(e) == (4, 7) and e.context == "hook apply-start[0]" and "missing required key 'command'" in e.message


def test_second_hook_index_in_context():
    text = one_hook("command: /bin/true") + "    - args: [x]\n"
    e = error(text)
    assert where(e) == (5, 7) and e.context == "hook apply-start[1]"


@pytest.mark.parametrize(
    "value, col, message",
    [
        ('""', 16, "must not be empty"),
        ('"  "', 16, "must not be empty"),
        ("[/bin/true]", 16, "expected a string, got a list"),
        ("42", 16, "expected a string, got an integer"),
        ("", 15, "expected a string, got null"),
    ],
)
def test_command_type(value, col, message):
    e = error(one_hook(f"command: {value}"))
    assert e.field == "command" and e.message == message
    line, column = where(e)
    assert line == 4 and (column == col or value == "")


def test_unknown_hook_key():
    e = error(one_hook("command: /bin/true\nenv: {A: b}"))
    assert where(e) == (5, 7) and e.field == "env"
    assert "unknown key 'env' (allowed: command, args, envs, workdir)" in e.message


@pytest.mark.parametrize(
    "value, col, field, message",
    [
        ("-x", 13, "args", "expected a list, got a string"),
        ('["-c", 5]', 20, "args[1]", "expected a string, got an integer"),
        ("[true]", 14, "args[0]", "expected a string, got a boolean"),
    ],
)
def test_args_types(value, col, field, message):
    e = error(one_hook(f"command: /bin/true\nargs: {value}"))
    assert where(e) == (5, col) and e.field == field and e.message == message


@pytest.mark.parametrize(
    "value, col, field, message",
    [
        ("[A=b]", 13, "envs", "expected a mapping, got a list"),
        ("{A: 1}", 17, "envs.A", "expected a string, got an integer"),
        ("{A: null}", 17, "envs.A", "expected a string, got null"),
        ('{"A=B": x}', 14, "envs.A=B", "'A=B' is not a valid environment variable name"),
        ('{"": x}', 14, "envs.", "'' is not a valid environment variable name"),
    ],
)
def test_envs_types(value, col, field, message):
    e = error(one_hook(f"command: /bin/true\nenvs: {value}"))
    assert where(e) == (5, col) and e.field == field and e.message == message


@pytest.mark.parametrize("value, message", [('""', "must not be empty"), ("[/tmp]", "expected a string, got a list")])
def test_workdir_types(value, message):
    e = error(one_hook(f"command: /bin/true\nworkdir: {value}"))
    assert where(e) == (5, 16) and e.field == "workdir" and e.message == message


def test_nul_in_argument_rejected():
    e = error(one_hook('command: /bin/true\nargs: ["a\\0b"]'))
    assert where(e) == (5, 14) and e.field == "args[0]" and "NUL" in e.message


def test_duplicate_hook_name():
    e = error("version: v1\nhooks:\n  apply-exit: []\n  apply-exit: []\n")
    assert where(e) == (4, 3) and "duplicate key 'apply-exit'" in e.message


def test_env_name_with_newline_is_rejected():
    e = error(one_hook('command: /bin/true\nenvs: {"A\\nB": x}'))
    assert where(e) == (5, 14) and "contains a control character" in e.message and "\n" not in str(e)



_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 9), st.text(max_size=8))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(["command", "args", "envs", "workdir"])), inner, max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["apply-start", "apply-exit", "other"]), _values)
def test_any_hook_value_is_accepted_or_a_one_line_spec_error(name, value):
    text = yaml.safe_dump({"version": "v1", "hooks": {name: [value]}})
    try:
        hf = parse_hooks(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.location is not None and exc.location.file == "fuzz.yaml"
        assert "\n" not in str(exc)
    else:
        (spec,) = hf.get(name)
        assert isinstance(spec.command, str) and spec.command.strip()
        assert all(isinstance(a, str) for a in spec.args)
