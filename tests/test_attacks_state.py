"""Attacks through the state directory (issue 14 items 3, 4, 11 and 16): a
journal planted by another user must never make root start a unit, nothing
root writes there follows a symlink, and no state file, however corrupt,
fails a run or `status` with a traceback."""

from __future__ import annotations

import errno
import json
import os

import pytest
from harden_support import NOBODY, make_node, write

from migmanagerd.service.run import ServiceOptions, ServiceRun

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown files to uid 65534")

PLANTED = {
    "version": 1,
    "selected_config": None,
    "last_run": None,
    "journal": {"config": "x", "phase": "stopping clients", "started_at": "2026-01-01T00:00:00Z", "pid": 1,
                "stopped_units": ["evil.service"], "boot_id": ""},
    "reboot_guard": None,
    "integrations": {},
}


class NoSystemd:
    """The run must not even connect to systemd: there is nothing it may start."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        raise AssertionError("the run connected to systemd to act on a planted journal")


def _run(node, *, connect=None, **options) -> tuple[object, NoSystemd]:
    spy = connect or NoSystemd()
    run = ServiceRun(ServiceOptions(selected_config="all-disabled", **options), node.paths, connect_systemd=spy)
    return run.run(), spy


@pytest.fixture
def node(tmp_path, monkeypatch):
    return make_node(tmp_path, monkeypatch)


@needs_root
def test_state_dir_owned_by_a_user_is_refused(node):
    d = node.paths.state_dir
    d.mkdir(parents=True, mode=0o700)
    write(d / "state.json", json.dumps(PLANTED), mode=0o600)
    os.chown(d, NOBODY, NOBODY)
    os.chown(d / "state.json", NOBODY, NOBODY)
    outcome, spy = _run(node)
    assert outcome.exit_code == 1 and "owned by uid 65534" in outcome.message, outcome.message
    assert spy.calls == 0


@needs_root
def test_state_dir_owned_by_a_user_is_refused_for_apply_by_hand_too(node):
    d = node.paths.state_dir
    d.mkdir(parents=True, mode=0o700)
    os.chown(d, NOBODY, NOBODY)
    proc = node.run("apply", "-c", "all-disabled")
    assert proc.returncode == 1 and "owned by uid 65534" in proc.stderr, proc.stderr


@needs_root
def test_journal_planted_in_an_open_state_dir_is_not_trusted(node):
    """A root-owned state dir left 0777: it is ours, so its mode is repaired,
    but a state.json another user wrote in it meanwhile is moved aside."""
    d = node.paths.state_dir
    d.mkdir(parents=True)
    d.chmod(0o777)
    planted = write(d / "state.json", json.dumps(PLANTED), mode=0o600)
    os.chown(planted, NOBODY, NOBODY)
    outcome, spy = _run(node)
    assert outcome.exit_code == 0, outcome.message
    assert spy.calls == 0
    assert (d.stat().st_mode & 0o777) == 0o700
    assert any(p.name.startswith("state.json.corrupt-") for p in d.iterdir())


def test_state_dir_symlink_is_refused(node, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    node.paths.state_dir.parent.mkdir(parents=True, exist_ok=True)
    node.paths.state_dir.symlink_to(elsewhere)
    outcome, spy = _run(node)
    assert outcome.exit_code == 1 and "is a symlink" in outcome.message, outcome.message
    assert list(elsewhere.iterdir()) == []


def test_run_lock_symlink_never_overwrites_its_target(node, tmp_path):
    precious = write(tmp_path / "precious", "keep me\n")
    d = node.paths.state_dir
    d.mkdir(parents=True, mode=0o700)
    (d / "run.lock").symlink_to(precious)
    _run(node)
    assert precious.read_text() == "keep me\n"


@pytest.mark.parametrize("name", ["run.lock", ".lock"])
def test_dangling_lock_symlink_never_creates_its_target(node, tmp_path, name):
    """O_CREAT through a dangling link creates the target as root (think
    /etc/nologin): the lock files are opened O_NOFOLLOW."""
    target = tmp_path / "created-by-root"
    d = node.paths.state_dir
    d.mkdir(parents=True, mode=0o700)
    (d / name).symlink_to(target)
    _run(node)
    assert not target.exists()


def test_deeply_nested_state_json_is_moved_aside(node):
    d = node.paths.state_dir
    d.mkdir(parents=True, mode=0o700)
    write(d / "state.json", "[" * 100_000 + "]" * 100_000, mode=0o600)
    proc = node.run("status")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
    assert "nested too deeply" in proc.stdout + proc.stderr
    outcome, _ = _run(node)
    assert outcome.exit_code == 0, outcome.message
    assert not (d / "state.json").read_text().startswith("[")


def test_full_disk_at_the_lock_write_is_not_a_traceback(node, monkeypatch):
    """A full state file system (ENOSPC) cannot be made without a mount; the
    pid write into run.lock is where it struck, so that call fails here."""

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    outcome, _ = _run(node)
    assert outcome.exit_code in (0, 1)  # a result, never an exception


def test_corrupt_simulator_state_is_one_line_in_status(node, tmp_path):
    (tmp_path / "sim.json").write_bytes(b"\xff\xfe{")
    proc = node.run("status")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "simulator state" in proc.stderr
