"""Notifier against a real unix datagram socket standing in for systemd's."""

from __future__ import annotations

import logging
import socket

import pytest

from migmanagerd.clients.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[bytes]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out


def test_exact_datagrams(notify_socket):
    notifier = Notifier.from_env()
    assert notifier.enabled
    notifier.status("stopping 3 GPU clients")
    notifier.extend_timeout(120)
    notifier.extend_timeout(0.25)
    notifier.ready()
    assert received(notify_socket) == [
        b"STATUS=stopping 3 GPU clients",
        b"EXTEND_TIMEOUT_USEC=120000000",
        b"EXTEND_TIMEOUT_USEC=250000",
        b"READY=1",
    ]


def test_status_is_one_line(notify_socket):
    Notifier.from_env().status("GPU 0:\n  reset\tdone ")
    assert received(notify_socket) == [b"STATUS=GPU 0: reset done"]


def test_non_latin1_text_still_arrives(notify_socket):
    Notifier.from_env().status("GPU 0 \u2192 all-1g.10gb")
    assert received(notify_socket) == [b"STATUS=GPU 0 ? all-1g.10gb"]


def test_abstract_socket_address(monkeypatch):
    name = f"migmanagerd-test-{id(monkeypatch)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier.from_env().ready()
        sock.settimeout(5)
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_silent_outside_systemd_but_status_is_logged(monkeypatch):
    # Own handler: setup_logging() elsewhere may stop propagation to caplog's.
    logger = logging.getLogger("migmanagerd.status")
    capture = Capture()
    logger.addHandler(capture)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    try:
        notifier = Notifier.from_env()
        assert not notifier.enabled
        notifier.status("applying config all-balanced")
        notifier.extend_timeout(10)
        notifier.ready()
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    assert [(r.levelno, r.getMessage()) for r in capture.records] == [(logging.INFO, "applying config all-balanced")]


def test_dead_socket_does_not_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notifier = Notifier.from_env()
    notifier.status("still fine")
    notifier.ready()
