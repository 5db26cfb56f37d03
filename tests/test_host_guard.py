"""The host guard (tests/host_guard.py) fails a run that touched the node.

Each case runs pytest in a subprocess on a small test file written here, with
the guard pointed at a stand-in for the host (``MIGMANAGERD_TEST_HOST_ROOT``,
and for reloads a real systemd user manager), so a deliberately bad test
shows the guard failing without touching this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DROP_IN = "etc/systemd/system/nvidia-mig-manager.service.d/override.conf"
RUN_TIMEOUT_S = 120


def run_pytest(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest, with only the guard plugin, on a file holding ``body``."""
    (tmp_path / "inner").mkdir(parents=True)
    (tmp_path / "inner" / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "inner" / "test_inner.py").write_text(textwrap.dedent(body))
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "host_guard",
         str(tmp_path / "inner" / "test_inner.py")],
        cwd=tmp_path / "inner", env=full_env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A stand-in host with the unit's drop-in directory, as an installed node has."""
    root = tmp_path / "host"
    (root / DROP_IN).parent.mkdir(parents=True)
    (root / "var/lib/nvidia-mig-manager").mkdir(parents=True)
    return root


def test_guard_fails_a_run_whose_test_writes_the_hosts_drop_in(tmp_path, host):
    proc = run_pytest(tmp_path, f"""
        import os
        from pathlib import Path

        def test_innocent(tmp_path):
            (tmp_path / "override.conf").write_text("x")

        def test_writes_the_drop_in():
            Path(os.environ["MIGMANAGERD_TEST_HOST_ROOT"], "{DROP_IN}").write_text("[Service]\\n")
        """, MIGMANAGERD_TEST_HOST_ROOT=str(host))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 passed" in out  # the tests themselves pass: the guard fails the run
    assert "HOST GUARD FAILED" in out
    assert f"created {host / DROP_IN}" in out
    assert "after test_inner.py::test_writes_the_drop_in" in out
    assert "test_innocent" not in out.split("HOST GUARD FAILED", 1)[1]


def test_guard_fails_a_run_that_changes_or_removes_host_state(tmp_path, host):
    state = host / "var/lib/nvidia-mig-manager/state.json"
    state.write_text("{}")
    proc = run_pytest(tmp_path, """
        import os
        from pathlib import Path

        def test_rewrites_state():
            root = Path(os.environ["MIGMANAGERD_TEST_HOST_ROOT"])
            (root / "var/lib/nvidia-mig-manager/state.json").write_text('{"selected": "x"}')
            (root / "etc/systemd/system/nvidia-mig-manager.service.d").rmdir()
        """, MIGMANAGERD_TEST_HOST_ROOT=str(host))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"changed {state}" in out
    assert f"removed {(host / DROP_IN).parent}" in out


def test_guard_passes_a_run_that_leaves_the_host_alone(tmp_path, host):
    (host / DROP_IN).write_text("[Service]\n")
    proc = run_pytest(tmp_path, """
        def test_reads_only(tmp_path):
            (tmp_path / "state.json").write_text("{}")
        """, MIGMANAGERD_TEST_HOST_ROOT=str(host))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "HOST GUARD" not in out
    assert f"host guard: {host / 'etc/nvidia-mig-manager'}" in out  # the header names what it watches


def test_guard_fails_a_run_that_reloads_the_watched_systemd(tmp_path, host, systemd_user):
    """A real manager stands in for the host's PID 1: daemon-reload is what
    `apply -c` does after writing the drop-in."""
    bus = systemd_user.env["DBUS_SESSION_BUS_ADDRESS"]
    quiet = run_pytest(tmp_path / "quiet", """
        def test_nothing():
            pass
        """, MIGMANAGERD_TEST_HOST_ROOT=str(host), MIGMANAGERD_TEST_HOST_SYSTEMD_BUS=bus)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr  # no reload, no failure
    assert "watching systemctl --user reloads" in quiet.stdout
    proc = run_pytest(tmp_path, """
        import os, subprocess

        def test_reloads():
            bus = os.environ["MIGMANAGERD_TEST_HOST_SYSTEMD_BUS"]
            env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus,
                   "XDG_RUNTIME_DIR": bus.removeprefix("unix:path=").rsplit("/", 1)[0]}
            subprocess.run(["systemctl", "--user", "daemon-reload"], env=env, check=True, timeout=30)
        """, MIGMANAGERD_TEST_HOST_ROOT=str(host), MIGMANAGERD_TEST_HOST_SYSTEMD_BUS=bus)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "the host's systemd was reloaded" in out


def test_this_session_is_guarded(request):
    """The project's own runs load the guard (tests/conftest.py)."""
    assert request.config.pluginmanager.has_plugin("host_guard")
