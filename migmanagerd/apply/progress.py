"""Progress lines for the journal and for systemd (sd_notify STATUS= and
EXTEND_TIMEOUT_USEC=), safe to call from the per-GPU worker threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from migmanagerd.log import get_logger

log = get_logger("apply")

# How long each kind of step may take before systemd should give up on the
# unit, in seconds. Assumptions with headroom, not measurements: GI/CI create
# and destroy take well under a second on A100/H100 in nvidia-smi transcripts,
# a GPU reset takes seconds to tens of seconds.
STEP_TIMEOUT_S = {
    "create": 60.0,
    "destroy": 60.0,
    "set_mode": 120.0,
    "reset": 300.0,
    "rollback": 120.0,
}


class Notifier(Protocol):
    def status(self, text: str) -> None: ...

    def extend_timeout(self, seconds: float) -> None: ...


class Progress:
    def __init__(self, notify: Notifier | None, gpu_count: int) -> None:
        self._notify = notify
        self._count = gpu_count
        self._lock = threading.Lock()

    def node(self, text: str, step: str | None = None) -> None:
        self._emit(text, step)

    def gpu(self, index: int, text: str, step: str | None = None) -> None:
        # "GPU 0 (1/8)": the index every other message uses, and a count from
        # one ("0/8" read as "none of eight")
        self._emit(f"GPU {index} ({index + 1}/{self._count}): {text}", step)

    def for_gpu(self, index: int) -> Callable[[str], None]:
        """A one-argument callback for ``GpuWriter`` (rollback steps)."""
        return lambda text: self.gpu(index, text, "rollback")

    def _emit(self, text: str, step: str | None) -> None:
        log.debug("%s", text)
        if self._notify is None:
            return
        with self._lock:
            try:
                if step is not None:
                    self._notify.extend_timeout(STEP_TIMEOUT_S[step])
                self._notify.status(text)
            except OSError as exc:  # a gone notify socket must never break an apply
                log.debug("notify failed: %s", exc)
