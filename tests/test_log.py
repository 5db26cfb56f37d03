"""Logging fits the journal: one line per event, priority prefixes under systemd."""

from __future__ import annotations

import pytest

from migmanagerd.log import get_logger, setup_logging


@pytest.fixture
def emit(monkeypatch, capsys):
    def run(under_systemd: bool, debug: bool = False) -> list[str]:
        for var in ("JOURNAL_STREAM", "INVOCATION_ID"):
            monkeypatch.delenv(var, raising=False)
        if under_systemd:
            monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
        setup_logging(debug)
        log = get_logger("test")
        log.error("bad thing")
        log.warning("careful")
        log.info("did it")
        log.debug("detail")
        log.info("two\nlines")
        return capsys.readouterr().err.splitlines()

    yield run
    setup_logging(False)


def test_under_systemd_each_line_carries_its_syslog_priority(emit):
    assert emit(True) == ["<3>bad thing", "<4>careful", "<6>did it", "<6>two lines"]


def test_debug_raises_verbosity(emit):
    assert "<7>detail" in emit(True, debug=True)


def test_on_a_terminal_lines_name_the_program_and_level(emit):
    lines = emit(False)
    assert lines[:3] == ["migmanagerd: error: bad thing", "migmanagerd: warning: careful", "migmanagerd: did it"]
    assert not any(line[:1].isdigit() for line in lines), "no timestamps: journald adds its own"


def test_mig_parted_debug_turns_on_debug(monkeypatch, capsys):
    from migmanagerd.cli.main import parse_args

    monkeypatch.setenv("MIG_PARTED_DEBUG", "true")
    args = parse_args(["status"])
    assert args.debug is True
