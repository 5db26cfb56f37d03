"""sd_notify(3) progress reports to systemd, via the sdnotify package.

``nvidia-mig-manager.service`` is a oneshot that can legitimately run for
minutes (GPU resets, many instances): ``EXTEND_TIMEOUT_USEC=`` keeps its start
timeout from firing while work progresses, and ``STATUS=`` is what
``systemctl status`` shows meanwhile. systemd accepts these from a oneshot only
with ``NotifyAccess=main`` (or ``all``) in the unit (systemd.service(5)).

Outside systemd (no ``NOTIFY_SOCKET``) every call is a silent no-op, except
that status lines are always logged, so the journal and a terminal see them.
"""

from __future__ import annotations

import os
from typing import Protocol

from migmanagerd.log import get_logger

log = get_logger("status")


class _Sender(Protocol):
    def notify(self, state: str) -> None: ...


class Notifier:
    def __init__(self, sender: _Sender | None = None) -> None:
        self._sender = sender

    @classmethod
    def from_env(cls) -> Notifier:
        """A notifier for ``NOTIFY_SOCKET``; a no-op one when it is unset."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return cls(None)
        import sdnotify

        # sdnotify swallows socket errors (debug=False): progress reports must
        # never be the reason an apply fails.
        return cls(sdnotify.SystemdNotifier())

    @property
    def enabled(self) -> bool:
        return self._sender is not None

    def status(self, text: str) -> None:
        line = " ".join(text.split())  # one line: systemd shows STATUS= as is
        log.info("%s", line)
        self._send(f"STATUS={line}")

    def warn(self, text: str) -> None:
        """A decision the operator must notice (a reboot): logged once, at
        warning priority, and shown as the unit's Status:."""
        line = " ".join(text.split())
        log.warning("%s", line)
        self._send(f"STATUS={line}")

    def failed(self, text: str) -> None:
        """A run's failure: logged once at error priority, shown as the unit's Status:."""
        line = " ".join(text.split())
        log.error("%s", line)
        self._send(f"STATUS=failed: {line}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more from now before systemd's start timeout."""
        usec = max(1, int(seconds * 1_000_000))
        self._send(f"EXTEND_TIMEOUT_USEC={usec}")

    def ready(self) -> None:
        self._send("READY=1")

    def _send(self, state: str) -> None:
        if self._sender is None:
            return
        # sdnotify encodes latin-1 and would silently drop anything else.
        self._sender.notify(state.encode("latin-1", "replace").decode("latin-1"))
