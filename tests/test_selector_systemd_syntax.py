"""The drop-in read the way systemd's config parser reads it (issue 14 item 15),
checked against a real systemd user manager: comments inside continuations,
escaped trailing backslashes, a continuation left open at the end of the file,
section headers recognised after joining, and an invalid header making systemd
ignore the rest of the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_service_selector import _systemd_env

from migmanagerd.errors import UsageError
from migmanagerd.service.selector import (
    invalid_header_line,
    parse_selector,
    read_selector,
    render_selector,
    write_selector,
)
from migmanagerd.service.unit_env import environment_map, mismatches

SEL = "MIG_PARTED_SELECTED_CONFIG"

# (text, what systemd 252 sets for A, B and the selection): each one tried on
# a real manager by test_reader_agrees_with_systemd below
CASES = {
    "open-continuation-at-eof": "[Service]\nEnvironment=A=1 \\\n",
    "comment-inside-continuation": "[Service]\nEnvironment=A=1 \\\n# a comment\n  B=2\n",
    "semicolon-comment-inside-continuation": "[Service]\nEnvironment=A=1 \\\n   ; note\n  B=2\n",
    "escaped-trailing-backslash": "[Service]\nEnvironment=A=1\\\\\nEnvironment=B=2\n",
    "empty-line-ends-continuation": "[Service]\nEnvironment=A=1 \\\n\nEnvironment=B=2\n",
    "header-with-comment": f"[Service]\nEnvironment=A=1\n[Service] # c\nEnvironment={SEL}=x\n",
    "header-with-comment-first": f"[Service] # c\nEnvironment={SEL}=x\n",
    "header-joined-by-continuation": "[Serv\\\nice]\nEnvironment=A=1\n",
    "continuation-swallows-header": "[Service]\nEnvironment=B=2 \\\n[Unit]\nEnvironment=A=1\n",
    "indented-header": "  [Service]  \nEnvironment=A=1\n",
    "assignment-before-any-section": "Environment=A=1\n[Service]\nEnvironment=B=2\n",
    "line-without-equals": "[Service]\nbogus line\nEnvironment=A=1\n",
}


def ours(text: str) -> dict[str, str]:
    return parse_selector(text, Path("override.conf")).environment


def test_pure_reading_of_each_case():
    assert ours(CASES["open-continuation-at-eof"]) == {"A": "1"}
    assert ours(CASES["comment-inside-continuation"]) == {"A": "1", "B": "2"}
    assert ours(CASES["semicolon-comment-inside-continuation"]) == {"A": "1", "B": "2"}
    assert ours(CASES["escaped-trailing-backslash"]) == {"A": "1\\", "B": "2"}
    assert ours(CASES["empty-line-ends-continuation"]) == {"A": "1", "B": "2"}
    assert ours(CASES["header-with-comment"]) == {"A": "1"}
    assert ours(CASES["header-with-comment-first"]) == {}
    assert ours(CASES["header-joined-by-continuation"]) == {}
    assert ours(CASES["continuation-swallows-header"]) == {"A": "1", "B": "2"}
    assert ours(CASES["indented-header"]) == {"A": "1"}
    assert ours(CASES["assignment-before-any-section"]) == {"B": "2"}
    assert ours(CASES["line-without-equals"]) == {"A": "1"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reader_agrees_with_systemd(systemd_user, name):
    text = CASES[name]
    truth = _systemd_env(systemd_user, text)
    relevant = {k: v for k, v in truth.items() if k in ("A", "B", SEL)}
    assert relevant == ours(text)


def test_status_no_longer_reports_a_selection_systemd_ignores(tmp_path):
    p = tmp_path / "override.conf"
    p.write_text(CASES["header-with-comment-first"])
    s = read_selector(p)
    assert s.selected_config is None
    assert s.problem is not None and f"{p}:1: invalid section header" in s.problem
    assert invalid_header_line(p.read_text()) == 1


def test_select_refuses_a_file_systemd_would_partly_ignore(tmp_path):
    p = tmp_path / "override.conf"
    p.write_text(CASES["header-with-comment"])
    with pytest.raises(UsageError, match=rf"{p}:3: invalid section header '\[Service\] # c'"):
        write_selector(p, "all-balanced")
    assert p.read_text() == CASES["header-with-comment"]  # untouched


def test_open_continuation_does_not_swallow_our_line():
    text = render_selector(CASES["open-continuation-at-eof"], "all-balanced")
    assert text == '[Service]\nEnvironment=A=1 \\\n\nEnvironment="MIG_PARTED_SELECTED_CONFIG=all-balanced"\n'
    assert ours(text) == {"A": "1", SEL: "all-balanced"}
    comment_tail = "[Service]\nEnvironment=A=1 \\\n# trailing\n"
    assert ours(render_selector(comment_tail, "x")) == {"A": "1", SEL: "x"}


@pytest.mark.parametrize("name", ["open-continuation-at-eof", "comment-inside-continuation",
                                  "escaped-trailing-backslash", "continuation-swallows-header"])
def test_rewritten_file_selects_for_systemd(systemd_user, name):
    before = _systemd_env(systemd_user, CASES[name])
    after = _systemd_env(systemd_user, render_selector(CASES[name], "all-balanced"))
    assert after[SEL] == "all-balanced"
    assert {k: after.get(k) for k in ("A", "B")} == {k: before.get(k) for k in ("A", "B")}


def test_unit_environment_comparison_is_pure():
    unit = environment_map([f"{SEL}=old", "A=1", f"{SEL}=new"])
    assert unit == {SEL: "new", "A": "1"}
    assert mismatches({SEL: "new"}, unit) == []
    assert mismatches({SEL: "x", "MIG_PARTED_CONFIG_FILE": "/srv/c.yaml"}, unit) == [
        f"{SEL} is 'new' in the unit, the drop-in sets 'x'",
        "MIG_PARTED_CONFIG_FILE is unset in the unit, the drop-in sets '/srv/c.yaml'",
    ]
