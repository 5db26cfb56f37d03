"""Replace a file so that readers see the old or the new content, never half.

Slurm, node_exporter and CDI tooling read these files at any moment, and a
crash or power loss mid-write must not leave a truncated file behind: write a
temporary file in the same directory, fsync it, rename it over the target,
then fsync the directory so the rename itself is durable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, text: str, mode: int = 0o644) -> None:
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        # mkdir's "File exists" hides the cause: a dangling symlink (or a file) there
        kind = "a dangling symlink" if target.parent.is_symlink() else "not a directory"
        raise NotADirectoryError(f"{target.parent} is {kind}; cannot write {target.name} there") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
