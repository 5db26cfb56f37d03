"""The selector drop-in: reading hand-edited files, rewriting them atomically,
and (where a real systemd user manager can run) agreeing with systemd itself."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest

from migmanagerd.errors import EXIT_USAGE, UsageError
from migmanagerd.service.selector import (
    parse_selector,
    quote_assignment,
    read_selector,
    render_selector,
    split_words,
    write_selector,
)


def dropin(tmp_path: Path, text: str | None = None) -> Path:
    p = tmp_path / "nvidia-mig-manager.service.d" / "override.conf"
    if text is not None:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return p


def test_missing_file_selects_nothing(tmp_path: Path) -> None:
    s = read_selector(dropin(tmp_path))
    assert (s.selected_config, s.config_file, s.hooks_file) == (None, None, None)


def test_write_new_file_exact_content_and_mode(tmp_path: Path) -> None:
    p = dropin(tmp_path)
    old = os.umask(0o077)
    try:
        assert write_selector(p, "all-balanced") is True
    finally:
        os.umask(old)
    assert p.read_text() == '[Service]\nEnvironment="MIG_PARTED_SELECTED_CONFIG=all-balanced"\n'
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert read_selector(p).selected_config == "all-balanced"


def test_write_same_selection_reports_no_change(tmp_path: Path) -> None:
    p = dropin(tmp_path)
    assert write_selector(p, "all-1g.5gb") is True
    before = p.stat().st_mtime_ns, p.stat().st_ino
    assert write_selector(p, "all-1g.5gb") is False
    assert (p.stat().st_mtime_ns, p.stat().st_ino) == before


def test_default_paths_are_not_written(tmp_path: Path) -> None:
    p = dropin(tmp_path)
    write_selector(p, "x", "/etc/nvidia-mig-manager/config.yaml", "/etc/nvidia-mig-manager/hooks.yaml")
    assert "MIG_PARTED_CONFIG_FILE" not in p.read_text()
    assert "MIG_PARTED_HOOKS_FILE" not in p.read_text()
    write_selector(p, "x", "/srv/mig/config.yaml", "/srv/mig/hooks.yaml")
    s = read_selector(p)
    assert (s.selected_config, s.config_file, s.hooks_file) == ("x", "/srv/mig/config.yaml", "/srv/mig/hooks.yaml")
    # back to defaults removes the lines again
    write_selector(p, "x")
    s = read_selector(p)
    assert (s.config_file, s.hooks_file) == (None, None)
    assert p.read_text() == '[Service]\nEnvironment="MIG_PARTED_SELECTED_CONFIG=x"\n'


def test_paths_with_spaces_and_percent_round_trip(tmp_path: Path) -> None:
    p = dropin(tmp_path)
    write_selector(p, "x", '/srv/my mig/100%/conf "a".yaml')
    assert read_selector(p).config_file == '/srv/my mig/100%/conf "a".yaml'


@pytest.mark.parametrize("name", ["", "a b", 'a"b', "a'b", "a\nb", "a\\b", "tab\there", "$(reboot)", "a`b`"])
def test_bad_names_are_usage_errors_and_touch_nothing(tmp_path: Path, name: str) -> None:
    p = dropin(tmp_path, '[Service]\nEnvironment="MIG_PARTED_SELECTED_CONFIG=keep"\n')
    before = p.read_text()
    with pytest.raises(UsageError) as exc:
        write_selector(p, name)
    assert exc.value.exit_code == EXIT_USAGE
    assert "\n" not in str(exc.value)
    assert p.read_text() == before


def test_relative_config_path_rejected(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="absolute"):
        write_selector(dropin(tmp_path), "x", "config.yaml")


HAND_EDITED = """\
# Selected by the fleet tool on 2026-01-01
; an old-style comment
[Unit]
Description=keep me

[Service]
Environment=FOO=1 "BAR=two words" MIG_PARTED_SELECTED_CONFIG=old-one
Environment='MIG_PARTED_CONFIG_FILE=/srv/mig/config.yaml'
Environment=MIG_PARTED_DEBUG=true
Environment="MIG_PARTED_SELECTED_CONFIG=newer-one"
TimeoutStartSec=30min

# trailing comment
"""


def test_read_hand_edited_last_assignment_wins(tmp_path: Path) -> None:
    s = read_selector(dropin(tmp_path, HAND_EDITED))
    assert s.selected_config == "newer-one"
    assert s.config_file == "/srv/mig/config.yaml"
    assert s.hooks_file is None
    assert s.environment["FOO"] == "1"
    assert s.environment["BAR"] == "two words"
    assert s.environment["MIG_PARTED_DEBUG"] == "true"


def test_rewrite_hand_edited_keeps_everything_else(tmp_path: Path) -> None:
    p = dropin(tmp_path, HAND_EDITED)
    assert write_selector(p, "all-balanced", "/srv/mig/config.yaml") is True
    text = p.read_text()
    assert text == textwrap.dedent(
        """\
        # Selected by the fleet tool on 2026-01-01
        ; an old-style comment
        [Unit]
        Description=keep me

        [Service]
        Environment=FOO=1 "BAR=two words"
        Environment=MIG_PARTED_DEBUG=true
        TimeoutStartSec=30min
        Environment="MIG_PARTED_SELECTED_CONFIG=all-balanced"
        Environment="MIG_PARTED_CONFIG_FILE=/srv/mig/config.yaml"

        # trailing comment
        """
    )
    s = read_selector(p)
    assert s.selected_config == "all-balanced"
    assert s.environment["BAR"] == "two words"


def test_file_without_service_section_gets_one(tmp_path: Path) -> None:
    p = dropin(tmp_path, "[Unit]\nAfter=foo.service")  # no final newline
    write_selector(p, "x")
    assert p.read_text() == '[Unit]\nAfter=foo.service\n\n[Service]\nEnvironment="MIG_PARTED_SELECTED_CONFIG=x"\n'


def test_selection_in_unit_section_is_not_a_selection(tmp_path: Path) -> None:
    # systemd ignores Environment= outside [Service]; so do we
    s = read_selector(dropin(tmp_path, "[Unit]\nEnvironment=MIG_PARTED_SELECTED_CONFIG=x\n"))
    assert s.selected_config is None


def test_empty_environment_resets(tmp_path: Path) -> None:
    text = "[Service]\nEnvironment=MIG_PARTED_SELECTED_CONFIG=a\nEnvironment=\nEnvironment=OTHER=1\n"
    assert read_selector(dropin(tmp_path, text)).selected_config is None
    # and a rewrite puts ours after the reset, where it counts
    p = dropin(tmp_path, text)
    write_selector(p, "b")
    assert read_selector(p).selected_config == "b"


def test_line_continuation(tmp_path: Path) -> None:
    text = "[Service]\nEnvironment=A=1 \\\n  MIG_PARTED_SELECTED_CONFIG=cont\n"
    p = dropin(tmp_path, text)
    assert read_selector(p).selected_config == "cont"
    write_selector(p, "new")
    assert p.read_text() == '[Service]\nEnvironment=A=1\nEnvironment="MIG_PARTED_SELECTED_CONFIG=new"\n'


def test_crlf_file(tmp_path: Path) -> None:
    p = dropin(tmp_path)
    p.parent.mkdir(parents=True)
    p.write_bytes(b"[Service]\r\nEnvironment=MIG_PARTED_SELECTED_CONFIG=win X=1\r\n")
    assert read_selector(p).selected_config == "win"
    write_selector(p, "lin")
    assert read_selector(p).selected_config == "lin"
    assert read_selector(p).environment["X"] == "1"


def test_non_utf8_file_is_a_usage_error(tmp_path: Path) -> None:
    p = dropin(tmp_path)
    p.parent.mkdir(parents=True)
    p.write_bytes(b"[Service]\nEnvironment=A=\xff\n")
    with pytest.raises(UsageError, match=str(p)):
        read_selector(p)


@pytest.mark.parametrize(
    "value, expect",
    [
        ('A=1 B=2', ["A=1", "B=2"]),
        ('"A=x y" B=z', ["A=x y", "B=z"]),
        ("'A=x y'", ["A=x y"]),
        ('A="x y"', ["A=x y"]),  # quotes may start mid-word
        (r'"A=a\"b"', ['A=a"b']),
        (r'A=a\x41', ["A=aA"]),
        (r'"A=tab\there"', ["A=tab\there"]),
        ('"A=100%%"', ["A=100%"]),
        ('"A=unclosed quote', ["A=unclosed quote"]),
        ("", []),
    ],
)
def test_split_words_follows_systemd(value: str, expect: list[str]) -> None:
    assert [w.value for w in split_words(value)] == expect


def test_quote_assignment_round_trips() -> None:
    for value in ["plain", "two words", 'q"uote', "back\\slash", "50%", "%n"]:
        words = split_words(quote_assignment("V", value))
        assert [w.value for w in words] == [f"V={value}"]


def test_render_is_pure_and_idempotent() -> None:
    once = render_selector(HAND_EDITED, "x")
    assert render_selector(once, "x") == once
    assert parse_selector(once, Path("/x")).selected_config == "x"


def test_atomic_rewrite_leaves_no_temp_files(tmp_path: Path) -> None:
    p = dropin(tmp_path)
    for name in ("a", "b", "c"):
        write_selector(p, name)
    assert sorted(x.name for x in p.parent.iterdir()) == ["override.conf"]


def test_failed_rename_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    p = dropin(tmp_path)
    write_selector(p, "old")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(Exception) as exc:
        write_selector(p, "new")
    monkeypatch.undo()
    assert "No space left" in str(exc.value) and str(p) in str(exc.value)
    assert read_selector(p).selected_config == "old"
    assert sorted(x.name for x in p.parent.iterdir()) == ["override.conf"]


# --- against systemd itself ------------------------------------------------------

SYSTEMD_CASES = [
    HAND_EDITED,
    "[Service]\nEnvironment=\"MIG_PARTED_SELECTED_CONFIG=q\" 'OTHER=a b'\n",
    "[Service]\nEnvironment=MIG_PARTED_SELECTED_CONFIG=\"mid quoted\" B=100%%\n",
    "[Service]\nEnvironment=A=1 \\\n  MIG_PARTED_SELECTED_CONFIG=cont\n",
    "[Service]\nEnvironment=MIG_PARTED_SELECTED_CONFIG=a\nEnvironment=\nEnvironment=OTHER=1\n",
    "[Service]\nEnvironment=\"ESC=a\\\"b\\x41\"\n",
]


def _systemd_env(systemd_user, dropin_text: str) -> dict[str, str]:
    out = systemd_user.root / "selector-env.out"
    if out.exists():
        out.unlink()
    systemd_user.write_unit(
        "selector-probe.service",
        f"[Service]\nType=oneshot\nExecStart=/bin/sh -c 'env -0 > {out}'\n",
    )
    systemd_user.write_unit("selector-probe.service.d/override.conf", dropin_text)
    systemd_user.daemon_reload()
    systemd_user.systemctl("start", "selector-probe.service")
    env = {}
    for item in out.read_bytes().split(b"\0"):
        if item:
            k, _, v = item.decode().partition("=")
            env[k] = v
    return env


@pytest.mark.parametrize("case", range(len(SYSTEMD_CASES)))
def test_reader_agrees_with_systemd(systemd_user, tmp_path: Path, case: int) -> None:
    text = SYSTEMD_CASES[case]
    truth = _systemd_env(systemd_user, text)
    ours = parse_selector(text, Path("override.conf")).environment
    for name, value in ours.items():
        assert truth.get(name) == value, name
    assert truth.get("MIG_PARTED_SELECTED_CONFIG") == parse_selector(text, Path("x")).selected_config


@pytest.mark.parametrize("case", range(len(SYSTEMD_CASES)))
def test_rewritten_file_means_to_systemd_what_we_meant(systemd_user, case: int) -> None:
    before = _systemd_env(systemd_user, SYSTEMD_CASES[case])
    new_text = render_selector(SYSTEMD_CASES[case], "all-1g.10gb+me", "/srv/my configs/config.yaml")
    after = _systemd_env(systemd_user, new_text)
    assert after["MIG_PARTED_SELECTED_CONFIG"] == "all-1g.10gb+me"
    assert after["MIG_PARTED_CONFIG_FILE"] == "/srv/my configs/config.yaml"
    # ours, and what differs per invocation anyway
    owned = {"MIG_PARTED_SELECTED_CONFIG", "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_HOOKS_FILE", "INVOCATION_ID", "SYSTEMD_EXEC_PID"}
    assert {k: v for k, v in before.items() if k not in owned} == {k: v for k, v in after.items() if k not in owned}
