"""The one lock helper and the one atomic-write helper every module uses."""

from __future__ import annotations

import os
import stat

import pytest

from migmanagerd.atomic_file import write_atomic, write_text_atomic
from migmanagerd.file_lock import LockTimeout, acquire


def test_a_held_lock_times_out_and_says_so_once(tmp_path):
    path = tmp_path / "run.lock"
    held = acquire(path, 1.0)
    waits: list[int] = []
    try:
        with pytest.raises(LockTimeout) as err:
            acquire(path, 0.2, on_wait=waits.append)
        assert str(path) in str(err.value)
        assert len(waits) == 1
    finally:
        os.close(held)
    # released: the next caller gets it at once, without waiting
    fd = acquire(path, 0.0, on_wait=waits.append)
    os.close(fd)
    assert len(waits) == 1


def test_a_lock_without_a_time_limit_is_taken_and_held(tmp_path):
    path = tmp_path / "x.lock"
    fd = acquire(path, None, mode=0o644)
    try:
        with pytest.raises(LockTimeout):  # another open file description is refused
            os.close(acquire(path, 0.0))
    finally:
        os.close(fd)


def test_atomic_writes_replace_whole_files_and_leave_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, b"old", 0o600)
    write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    text = tmp_path / "sub" / "gres.conf"  # the text form creates the directory
    write_text_atomic(text, "Name=gpu\n")
    assert text.read_text() == "Name=gpu\n" and stat.S_IMODE(text.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["gres.conf", "state.json", "sub"]
