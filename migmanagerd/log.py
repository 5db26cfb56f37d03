"""Logging that fits the journal: one line per event.

Under systemd (``JOURNAL_STREAM`` or ``INVOCATION_ID`` set) each line starts
with its syslog priority (``<3>`` error, ``<4>`` warning, ``<6>`` info,
``<7>`` debug) and carries no timestamp, since journald adds its own.
Elsewhere lines go to stderr as ``migmanagerd: LEVEL: message``.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\n``):
    a config name or unit from a file or the command line must not move the
    cursor, clear the terminal or forge a journal line when it is printed.
    Other non-ASCII text (names in UTF-8) is kept as it is."""
    if all(c.isprintable() for c in text):
        return text
    return "".join(
        c if c.isprintable() else _ESCAPES.get(c, f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        for c in text
    )


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = escape_controls(" ".join(super().format(record).splitlines()))
        return f"<{_PRIORITY.get(record.levelno, 6)}>{msg}"


class TerminalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = escape_controls(" ".join(super().format(record).splitlines()))
        level = record.levelname.lower()
        return f"migmanagerd: {msg}" if record.levelno == logging.INFO else f"migmanagerd: {level}: {msg}"


def setup_logging(debug: bool = False) -> None:
    root = logging.getLogger("migmanagerd")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter("%(message)s") if under_systemd() else TerminalFormatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"migmanagerd.{name}")
