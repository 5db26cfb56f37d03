"""Build the project's Debian package once per test session.

From a clean copy of the tracked files, with dpkg-buildpackage; the package
tests (test_package.py) and the boot tests (test_boot.py) both use the result
through the session fixture ``deb_package`` in conftest.py. Skips naming what
is missing when the build tools are not installed (the Makefile's apt step
installs them).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from migmanagerd import __version__

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _copy_tracked_files(dest: Path) -> None:
    proc = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout: cannot tell the tracked files to build from")
    for name in proc.stdout.decode().split("\0"):
        src = ROOT / name
        if not name or not (src.is_file() or src.is_symlink()):
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def build_deb(work: Path) -> Path:
    """Build migmanagerd_<version>_all.deb in ``work``; returns its path."""
    for tool in ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dpkg-deb", "git"):
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            pytest.skip(f"{tool} is not installed: cannot build the Debian package")
    src = work / "migmanagerd"
    _copy_tracked_files(src)
    env = {"PATH": SYSTEM_PATH, "HOME": str(work), "LANG": "C.UTF-8", "DEB_BUILD_OPTIONS": "nocheck"}
    deps = subprocess.run(["dpkg-checkbuilddeps"], cwd=src, capture_output=True, text=True, env=env)
    if deps.returncode != 0:
        pytest.skip(f"build dependencies missing: {deps.stderr.strip()}")
    log = work / "build.log"
    with log.open("w") as out:
        proc = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        pytest.fail("dpkg-buildpackage failed:\n" + "\n".join(log.read_text().splitlines()[-40:]))
    deb = work / f"migmanagerd_{__version__}_all.deb"
    assert deb.is_file(), sorted(p.name for p in work.iterdir())
    return deb
