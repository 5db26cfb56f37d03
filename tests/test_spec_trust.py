"""check_trusted: refuse files another user could have written."""

from __future__ import annotations

import os
import stat

import pytest

from migmanagerd.errors import EXIT_USAGE, UsageError
from migmanagerd.spec.trust import check_trusted, trust_problem


@pytest.fixture
def private_dir(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    os.chmod(d, 0o755)
    return d


@pytest.fixture
def hooks_file(private_dir):
    p = private_dir / "hooks.yaml"
    p.write_text("version: v1\nhooks: {}\n")
    os.chmod(p, 0o644)
    return p


def refused(path, what="hooks file") -> UsageError:
    with pytest.raises(UsageError) as info:
        check_trusted(path, what)
    assert info.value.exit_code == EXIT_USAGE
    return info.value


def test_private_file_is_trusted(hooks_file):
    check_trusted(hooks_file, "hooks file")  # no exception


def test_read_only_for_others_is_trusted(hooks_file):
    os.chmod(hooks_file, 0o600)
    check_trusted(hooks_file, "hooks file")


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o622])
def test_file_writable_by_group_or_others(hooks_file, mode):
    os.chmod(hooks_file, mode)
    msg = str(refused(hooks_file))
    assert msg.startswith(f"refusing hooks file {hooks_file}: it is writable by group or others")
    assert f"mode {mode:04o}" in msg
    assert f"chmod go-w {hooks_file}" in msg
    assert f"uid {os.geteuid()}" in msg


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_directory_writable_by_group_or_others(hooks_file, private_dir, mode):
    os.chmod(private_dir, mode)
    msg = str(refused(hooks_file, "config file"))
    assert msg.startswith(f"refusing config file {hooks_file}: its directory {private_dir} is writable")
    assert f"mode {mode:04o}" in msg and f"chmod go-w {private_dir}" in msg


def test_symlink_target_is_checked(hooks_file, private_dir, tmp_path):
    link = private_dir / "link.yaml"
    link.symlink_to(hooks_file)
    check_trusted(link, "hooks file")
    os.chmod(hooks_file, 0o666)
    msg = str(refused(link))
    assert f"its target {hooks_file}" in msg


def test_symlink_into_unsafe_directory(private_dir, tmp_path):
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    os.chmod(unsafe, 0o777)
    target = unsafe / "hooks.yaml"
    target.write_text("x")
    os.chmod(target, 0o644)
    link = private_dir / "hooks.yaml"
    link.symlink_to(target)
    msg = str(refused(link))
    assert f"its directory {unsafe} is writable" in msg


def test_missing_file(private_dir):
    msg = str(refused(private_dir / "nope.yaml", "clients file"))
    assert msg == f"clients file {private_dir / 'nope.yaml'}: file not found"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a file to another uid")
def test_file_owned_by_another_user(hooks_file):
    os.chown(hooks_file, 4242, -1)
    msg = str(refused(hooks_file))
    assert "is owned by uid 4242" in msg or "(uid 4242)" in msg
    assert "not root or the current user" in msg and f"chown root: {hooks_file}" in msg


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a directory to another uid")
def test_directory_owned_by_another_user(hooks_file, private_dir):
    os.chown(private_dir, 4242, -1)
    msg = str(refused(hooks_file))
    assert f"its directory {private_dir} is owned by" in msg


# The pure rule, for owners a non-root test run cannot create.
@pytest.mark.parametrize(
    "uid, mode, euid, expected",
    [
        (0, 0o100644, 1000, None),  # root's file, read by a user
        (1000, 0o100600, 1000, None),  # the user's own file
        (1000, 0o100644, 0, "owner"),  # root must not trust a user's file
        (1001, 0o100644, 1000, "owner"),
        (0, 0o100664, 0, "writable"),
        (0, 0o100602, 0, "writable"),
        (0, 0o041777, 0, "writable"),  # /tmp-like directory
        (0, 0o104755, 0, None),  # setuid bits are not write bits
    ],
)
def test_trust_problem_rule(uid, mode, euid, expected):
    assert stat.S_IFMT(mode)  # realistic st_mode values, type bits included
    assert trust_problem(uid, mode, euid) == expected
