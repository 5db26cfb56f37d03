"""Which Slurm drain migmanagerd itself set, remembered across a reboot.

A drain reason is free text an operator can type too: a node drained by hand
with a reason that happens to start with ours must never be resumed by us.
So the drain is recorded (``<state dir>/slurm-drain.json``, next to state.json)
right after scontrol accepted it, and only a recorded drain is resumed. A run
killed between the two leaves the node drained and unrecorded: the safe side.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

from migmanagerd.atomic_file import write_text_atomic
from migmanagerd.log import get_logger
from migmanagerd.service.paths import NodePaths

log = get_logger("integrations.slurm")

RECORD_NAME = "slurm-drain.json"


class DrainRecord:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else NodePaths.from_env().state_dir / RECORD_NAME

    def is_ours(self, node: str) -> bool:
        try:
            doc = json.loads(_read_root_file(self.path))
        except FileNotFoundError:
            return False
        except (OSError, ValueError, RecursionError) as exc:
            # unreadable or not ours: then the drain is not known to be ours
            log.warning("%s: ignored (%s); no drain is taken as set by migmanagerd", self.path, exc)
            return False
        return isinstance(doc, dict) and doc.get("node") == node

    def remember(self, node: str, reason: str) -> None:
        try:
            write_text_atomic(self.path, json.dumps({"node": node, "reason": reason}) + "\n", 0o600)
        except OSError as exc:
            # unrecorded, the drain stays until an operator resumes it
            log.warning("%s: cannot record the drain (%s); the node will not be resumed automatically",
                        self.path, exc.strerror)

    def forget(self) -> None:
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("%s: cannot remove (%s)", self.path, exc.strerror)


def _read_root_file(path: Path) -> str:
    """Never through a symlink, and only a file root (or we) wrote."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise ValueError(f"not a file written by migmanagerd (uid {st.st_uid}, mode {st.st_mode:o})")
        return os.read(fd, 1 << 16).decode("utf-8")
    finally:
        os.close(fd)
