"""Privilege attacks on the files root reads (issue 14 items 1, 2 and 14):
an unprivileged user must not get a command run as root by writing, owning,
or redirecting (through a symlink or a directory they control) any of the
four operator files. The race runs a real unprivileged user (uid 65534, via
setpriv) flipping a symlink while root loads its inputs many times."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from harden_support import NOBODY, as_nobody, can_setpriv, make_node, write

from migmanagerd.errors import UsageError
from migmanagerd.service.run import ServiceOptions

needs_setpriv = pytest.mark.skipif(can_setpriv() is not None, reason=str(can_setpriv()))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown files to uid 65534")


def _cdi_integrations(out: Path) -> str:
    return (
        "version: v1\ncdi:\n  enabled: true\n  unit: null\n"
        f'  command: ["/bin/sh", "-c", "id -u > {out}"]\n'
    )


@pytest.fixture
def node(tmp_path, monkeypatch):
    return make_node(tmp_path, monkeypatch)


def _unchanged_run(node, tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    before = (tmp_path / "sim.json").read_bytes()
    proc = node.run(*args)
    assert (tmp_path / "sim.json").read_bytes() == before, "the GPUs were changed"
    return proc


def test_integrations_writable_by_others_is_refused(node, tmp_path):
    out = tmp_path / "ran-as-root"
    write(node.etc / "integrations.yaml", _cdi_integrations(out), mode=0o666)
    proc = _unchanged_run(node, tmp_path, "service", "-c", "all-balanced")
    assert proc.returncode == 2, proc.stderr
    assert "refusing integrations file" in proc.stderr and "writable by group or others" in proc.stderr
    assert not out.exists(), "cdi.command ran as root from a world-writable file"


@needs_root
def test_integrations_owned_by_a_user_is_refused(node, tmp_path):
    out = tmp_path / "ran-as-root"
    f = write(node.etc / "integrations.yaml", _cdi_integrations(out))
    os.chown(f, NOBODY, NOBODY)
    proc = _unchanged_run(node, tmp_path, "service", "-c", "all-balanced")
    assert proc.returncode == 2 and "(uid 65534)" in proc.stderr, proc.stderr
    assert not out.exists()


@needs_root
def test_integrations_symlink_into_a_users_directory_is_refused(node, tmp_path):
    out = tmp_path / "ran-as-root"
    users = tmp_path / "home"
    users.mkdir(mode=0o755)
    os.chown(users, NOBODY, NOBODY)
    target = write(users / "integrations.yaml", _cdi_integrations(out))
    (node.etc / "integrations.yaml").symlink_to(target)
    proc = _unchanged_run(node, tmp_path, "service", "-c", "all-balanced")
    assert proc.returncode == 2 and f"its directory {users}" in proc.stderr, proc.stderr
    assert not out.exists()


def test_control_trusted_integrations_still_run(node, tmp_path):
    out = tmp_path / "ran"
    write(node.etc / "integrations.yaml", _cdi_integrations(out))
    proc = node.run("service", "-c", "all-balanced")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().strip() == str(os.geteuid())


@needs_root
def test_symlink_through_a_users_directory_is_refused(node, tmp_path):
    """hooks.yaml -> /u/dir/h -> root's own file: the file and both ends'
    directories are root's, but /u/dir is not, so its owner decides what is read."""
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    root_hooks = write(safe / "hooks.yaml", "version: v1\nhooks: {}\n")
    users = tmp_path / "u"
    users.mkdir(mode=0o755)
    os.chown(users, NOBODY, NOBODY)
    (users / "h").symlink_to(root_hooks)
    os.lchown(users / "h", NOBODY, NOBODY)
    (node.etc / "hooks.yaml").symlink_to(users / "h")
    proc = _unchanged_run(node, tmp_path, "service", "-c", "all-balanced")
    assert proc.returncode == 2, proc.stderr
    assert str(users) in proc.stderr and "refusing hooks file" in proc.stderr


def test_writable_grandparent_is_refused(node, tmp_path):
    write(node.etc / "hooks.yaml", "version: v1\nhooks: {}\n")
    grandparent = node.etc.parent
    grandparent.chmod(0o777)
    proc = _unchanged_run(node, tmp_path, "service", "-c", "all-balanced")
    assert proc.returncode == 2, proc.stderr
    assert f"its directory {grandparent} is writable by group or others" in proc.stderr


@pytest.mark.parametrize("file_name", ["hooks.yaml", "clients.yaml", "integrations.yaml"])
@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_broken_symlink_is_an_error_not_absent(node, tmp_path, file_name, link):
    path = node.etc / file_name
    if link == "dangling":
        path.symlink_to(node.etc / "nowhere.yaml")
    else:
        other = node.etc / "other.yaml"
        path.symlink_to(other)
        other.symlink_to(path)
    proc = _unchanged_run(node, tmp_path, "service", "-c", "all-balanced")
    assert proc.returncode == 2, proc.stderr
    expected = "dangling symlink" if link == "dangling" else "too many levels of symbolic links"
    assert str(path) in proc.stderr and expected in proc.stderr, proc.stderr


# --- the race --------------------------------------------------------------------

FLIPPER = r"""
import os, sys, time
link, good, evil, stop = sys.argv[1:5]
tmp = link + ".new"
deadline = time.monotonic() + float(sys.argv[5])
while time.monotonic() < deadline and not os.path.exists(stop):
    for target in (good, evil):
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(target, tmp)
        os.rename(tmp, link)
"""
RACE_LOADS = 300
RACE_MAX_S = 60.0


@needs_setpriv
def test_flipping_symlink_never_gets_its_file_read(node, tmp_path):
    """Today's trust check resolved and checked the path, then the loader
    opened it again by name: a user flipping a link in a directory they own
    made root load their hooks file. Now the walk reads what it checked, so
    across many loads the user's file is never parsed."""
    shared = Path(tempfile.mkdtemp(prefix="migmanagerd-race-", dir="/tmp"))
    try:
        shared.chmod(0o755)  # a user must reach their directory in it
        safe = shared / "root"
        safe.mkdir(mode=0o755)
        good = write(safe / "hooks.yaml", "version: v1\nhooks: {}\n")
        users = shared / "u"
        users.mkdir(mode=0o755)
        os.chown(users, NOBODY, NOBODY)
        evil = write(users / "evil.yaml",
                     "version: v1\nhooks:\n  apply-start:\n  - command: /bin/touch\n    args: [/tmp/pwned]\n")
        os.chown(evil, NOBODY, NOBODY)
        link = users / "h"
        stop = users / "stop"
        (node.etc / "hooks.yaml").symlink_to(link)
        flipper = subprocess.Popen(
            as_nobody([sys.executable, "-c", FLIPPER, str(link), str(good), str(evil), str(stop), str(RACE_MAX_S)]),
        )
        try:
            deadline = time.monotonic() + 10
            while not link.is_symlink() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert link.is_symlink(), "the unprivileged flipper did not start"
            from migmanagerd.service.inputs import load_inputs  # what every run reads its files with

            evil_loads = good_loads = refused = 0
            options = ServiceOptions(selected_config="all-balanced")
            for _ in range(RACE_LOADS):
                try:
                    hooks = load_inputs(options, node.paths, None).hooks
                except UsageError:
                    refused += 1
                    continue
                if hooks.get("apply-start"):
                    evil_loads += 1
                else:
                    good_loads += 1
        finally:
            stop.touch()
            flipper.wait(timeout=RACE_MAX_S + 10)
        assert evil_loads == 0, f"root loaded the user's hooks {evil_loads} of {RACE_LOADS} times"
        # and a path through a directory the user owns is never trusted at all
        assert (refused, good_loads) == (RACE_LOADS, 0)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
