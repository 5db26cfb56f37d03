"""Replace a file so that a reader (or the next boot) sees the old or the new
content, never a mix: temp file in the same directory, write, fsync, rename,
fsync the directory.

rename(2) is atomic within one file system (POSIX), which is why the temp file
sits next to the target; the directory fsync makes the rename itself durable
across a power cut (fsync(2): syncing a file does not sync its directory entry).
"""

from __future__ import annotations

import os
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def temp_prefix(path: Path) -> str:
    """Prefix of the temp files written next to ``path`` (hidden, so a glob
    for ``*.conf`` or ``state.json`` never picks one up)."""
    return f".{path.name}."


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically; the parent directory must exist.

    On any failure the temp file is removed and ``path`` is left as it was.
    """
    directory = path.parent
    # O_EXCL with a pid+counter name instead of tempfile.mkstemp: the name
    # pattern stays predictable for cleanup_temp_files().
    for attempt in range(100):
        tmp = directory / f"{temp_prefix(path)}{os.getpid()}.{attempt}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"{directory}: could not create a temp file for {path.name}")
    try:
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def cleanup_temp_files(path: Path) -> list[Path]:
    """Remove temp files a killed writer left next to ``path``; returns them.

    Only call this while holding the writers' lock, or when no other writer
    can run, since a live writer's temp file matches the same pattern.
    """
    removed: list[Path] = []
    prefix = temp_prefix(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX):
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


def write_text_atomic(path: str | Path, text: str, mode: int = 0o644) -> None:
    """``write_atomic`` for text files others read (Slurm, node_exporter,
    CDI tooling), creating the parent directory when missing."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        # mkdir's "File exists" hides the cause: a dangling symlink (or a file) there
        kind = "a dangling symlink" if target.parent.is_symlink() else "not a directory"
        raise NotADirectoryError(f"{target.parent} is {kind}; cannot write {target.name} there") from None
    write_atomic(target, text.encode("utf-8"), mode)
