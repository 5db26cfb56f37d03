"""The Debian package, built once from a clean copy of the tracked files, then
installed into a throwaway root and run from there.

Needs dpkg-buildpackage and the build dependencies of debian/control (the
Makefile's apt step installs them); skips naming what is missing otherwise.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import setuptools

from migmanagerd import __version__

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Debian's interpreter, not the venv's: the package is for it.
SYSTEM_PYTHON = "/usr/bin/python3"
UNIT = "nvidia-mig-manager.service"
REQUIRED_CONFIG = ("config.yaml", "hooks.yaml", "clients.yaml")


def _tracked_config_yaml() -> set[str]:
    """The package is built from the tracked files; an untracked config/*.yaml is not in it."""
    proc = subprocess.run(["git", "-C", str(ROOT), "ls-files", "config"], capture_output=True, text=True)
    names = proc.stdout.split() if proc.returncode == 0 else []
    return {Path(n).name for n in names if n.endswith(".yaml") and "/" not in n[len("config/"):]}


# Every tracked operator file in config/ is shipped under /etc/nvidia-mig-manager.
SHIPPED_CONFIG = sorted(_tracked_config_yaml() | set(REQUIRED_CONFIG))
CONFFILES = {f"/etc/nvidia-mig-manager/{name}" for name in SHIPPED_CONFIG} | {
    "/etc/systemd/system/nvidia-mig-manager.service.d/override.conf",
}
MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm")
# Set per test by tests/conftest.py; every run of the installed program carries them.
ISOLATION_VARS = ("MIGMANAGERD_ROOT", "DBUS_SYSTEM_BUS_ADDRESS")


def test_changelog_version_is_the_package_version():
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    match = re.match(r"migmanagerd \(([^)]+)\) ", first)
    assert match, first
    assert match.group(1) == __version__, "debian/changelog and migmanagerd.__version__ disagree"


def test_build_outputs_in_debian_are_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("git or a git checkout is missing: cannot ask git what it ignores")
    outputs = ["debian/generated/migmanagerd.8", "debian/migmanagerd/usr/bin/migmanagerd", "debian/files",
               "debian/migmanagerd.substvars", "debian/debhelper-build-stamp", "debian/.debhelper/x"]
    proc = subprocess.run(["git", "-C", str(ROOT), "check-ignore", *outputs], capture_output=True, text=True)
    assert sorted(proc.stdout.split()) == sorted(outputs)


# ---- build once ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    deb: Path
    root: Path       # the package's files, extracted with dpkg -x
    control: Path    # its control archive, extracted with dpkg-deb -e
    work: Path

    @property
    def dist_packages(self) -> Path:
        return self.root / "usr/lib/python3/dist-packages"

    def run_installed(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
        """Run the installed /usr/bin/migmanagerd with the installed modules only,
        inside the test's throwaway node root (tests/conftest.py): a clean
        environment must not drop the isolation, or `apply -c` writes this
        machine's drop-in and state and reloads its systemd."""
        env = {"PATH": SYSTEM_PATH, "PYTHONPATH": str(self.dist_packages), "LANG": "C.UTF-8",
               **isolation_env(), **extra_env}
        return subprocess.run([SYSTEM_PYTHON, str(self.root / "usr/bin/migmanagerd"), *args],
                              capture_output=True, text=True, env=env, cwd=self.work)


def isolation_env() -> dict[str, str]:
    """The variables that keep a run off this machine's node files and system bus."""
    env = {name: os.environ.get(name, "") for name in ISOLATION_VARS}
    missing = [name for name, value in env.items() if not value]
    assert not missing, f"tests/conftest.py's isolation is not in effect: {missing} unset"
    return env


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


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    for tool in ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dpkg-deb", "git"):
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            pytest.skip(f"{tool} is not installed: cannot build the Debian package")
    work = tmp_path_factory.mktemp("deb")
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
    root, control = work / "root", work / "control"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    return Built(deb=deb, root=root, control=control, work=work)


# ---- the installed program ----------------------------------------------------------------


def test_installed_migmanagerd_prints_its_version(built):
    proc = built.run_installed("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"migmanagerd {__version__}"


def test_installed_migmanagerd_runs_from_the_installed_modules(built):
    env = {"PATH": SYSTEM_PATH, "PYTHONPATH": str(built.dist_packages)}
    proc = subprocess.run([SYSTEM_PYTHON, "-c", "import migmanagerd; print(migmanagerd.__file__)"],
                          capture_output=True, text=True, env=env, cwd=built.work)
    assert proc.stdout.strip().startswith(str(built.dist_packages)), proc.stdout + proc.stderr


def test_installed_migmanagerd_validates_the_shipped_config(built):
    config = built.root / "etc/nvidia-mig-manager/config.yaml"
    proc = built.run_installed("validate", "-f", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_installed_migmanagerd_applies_a_shipped_config_on_the_simulator(built, tmp_path):
    """The whole installed program (catalog data included) works on Debian's Python
    alone: nvidia-ml-py is needed only by the NVML backend."""
    config = str(built.root / "etc/nvidia-mig-manager/config.yaml")
    env = {"MIGMANAGERD_SIM_STATE": str(tmp_path / "node.json")}
    steps = [
        ("sim", "init", "--node", "2xA100-SXM4-40GB"),
        ("apply", "--backend", "sim", "-f", config, "-c", "all-1g.5gb"),
        ("assert", "--backend", "sim", "-f", config, "-c", "all-1g.5gb"),
    ]
    for args in steps:
        proc = built.run_installed(*args, **env)
        assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    proc = built.run_installed("assert", "--backend", "sim", "-f", config, "-c", "all-disabled", **env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # `apply -c` selected the config in the node's drop-in: the test's node root, not this machine's
    drop_in = Path(os.environ["MIGMANAGERD_ROOT"], "etc/systemd/system", f"{UNIT}.d", "override.conf")
    assert "all-1g.5gb" in drop_in.read_text()


def test_installed_nvidia_mig_parted_follows_the_peers_contract(built, tmp_path):
    """The replacement's nvidia-mig-parted: the peer's command line, exit 1 for every failure."""
    exe = built.root / "usr/bin/nvidia-mig-parted"
    assert os.access(exe, os.X_OK)
    config = str(built.root / "etc/nvidia-mig-manager/config.yaml")
    env = {"PATH": SYSTEM_PATH, "PYTHONPATH": str(built.dist_packages), "LANG": "C.UTF-8",
           "MIGMANAGERD_SIM_STATE": str(tmp_path / "node.json"), "MIGMANAGERD_BACKEND": "sim",
           "MIGMANAGERD_ROOT": str(tmp_path / "root")}

    def peer(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([SYSTEM_PYTHON, str(exe), *args], capture_output=True, text=True, env=env, cwd=built.work)

    assert built.run_installed("sim", "init", "--node", "2xA100-SXM4-40GB", **{k: v for k, v in env.items() if k.startswith("MIGMANAGERD_SIM")}).returncode == 0
    assert peer("-v").stdout.startswith("nvidia-mig-parted (migmanagerd) ")
    proc = peer("-d", "apply", "-f", config, "-c", "all-1g.5gb")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert peer("assert", "-f", config, "-c", "all-1g.5gb").returncode == 0
    assert peer("assert", "-f", config, "-c", "all-disabled").returncode == 1
    assert peer("apply", "-f", config, "-c", "no-such-config").returncode == 1  # migmanagerd: 2
    assert "mig-configs:" in peer("export").stdout


def test_package_replaces_nvidia_mig_manager(built):
    control = (built.control / "control").read_text()
    for field in ("Provides", "Conflicts", "Replaces"):
        line = next(x for x in control.splitlines() if x.startswith(f"{field}:"))
        assert "nvidia-mig-manager" in line.split(":", 1)[1], line
    assert (built.root / "usr/share/man/man8/nvidia-mig-parted.8.gz").is_file()


def test_launcher_searches_the_operators_nvidia_ml_py_directory_last(built):
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['migmanagerd', '--version']\n"
        "try:\n"
        f"    runpy.run_path({str(built.root / 'usr/bin/migmanagerd')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sys.path[-1])\n"
    )
    env = {"PATH": SYSTEM_PATH, "PYTHONPATH": str(built.dist_packages)}
    proc = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, env=env, cwd=built.work)
    assert proc.stdout.splitlines()[-1] == "/usr/local/lib/migmanagerd/python", proc.stdout + proc.stderr


# ---- what the package holds ---------------------------------------------------------------


def test_package_installs_units_man_page_completion_and_config(built):
    expected = [
        "usr/bin/migmanagerd",
        "usr/lib/python3/dist-packages/migmanagerd/cli/main.py",
        "usr/lib/python3/dist-packages/migmanagerd/catalog/models.yaml",
        "usr/lib/systemd/system/nvidia-mig-manager.service",
        "usr/lib/systemd/system/nvidia-gpu-reset.target",
        "usr/share/man/man8/migmanagerd.8.gz",
        "usr/share/bash-completion/completions/migmanagerd",
        "usr/share/doc/migmanagerd/packaging.md",
        *(c.lstrip("/") for c in CONFFILES),
    ]
    missing = [p for p in expected if not (built.root / p).is_file()]
    assert not missing
    assert os.access(built.root / "usr/bin/migmanagerd", os.X_OK)
    # units live only under /usr/lib: lib/ was a staging place for dh_installsystemd
    assert not (built.root / "lib").exists()


def test_package_holds_no_demo(built):
    """The demo (demo/) runs from a checkout only; neither the .deb nor the wheel carries it."""
    listing = subprocess.run(["dpkg-deb", "-c", str(built.deb)], capture_output=True, text=True, check=True).stdout
    paths = [line.split()[-1] for line in listing.splitlines()]
    assert not [p for p in paths if re.search(r"/(demo|usermanager)(/|\.py$)", p)]
    assert (built.dist_packages / "migmanagerd").is_dir() and not (built.dist_packages / "demo").exists()


def test_wheel_packages_are_migmanagerds_only():
    """What `[tool.setuptools.packages.find]` puts in the wheel (and pybuild in the .deb)."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_packages(str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    assert "migmanagerd" in packages and "migmanagerd.cli" in packages
    assert [p for p in packages if p.split(".")[0] != "migmanagerd" or ".demo" in p] == []


def test_shipped_config_files_are_the_projects(built):
    for name in SHIPPED_CONFIG:
        assert (built.root / "etc/nvidia-mig-manager" / name).read_bytes() == (ROOT / "config" / name).read_bytes()
    assert (built.root / "usr/lib/systemd/system" / UNIT).read_bytes() == (ROOT / "systemd" / UNIT).read_bytes()


def test_state_dir_is_root_only(built):
    listing = subprocess.run(["dpkg-deb", "-c", str(built.deb)], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in listing.splitlines() if ln.rstrip().endswith("./var/lib/nvidia-mig-manager/"))
    assert line.split()[:2] == ["drwx------", "root/root"], line
    assert stat.S_IMODE((built.root / "var/lib/nvidia-mig-manager").stat().st_mode) == 0o700


def test_every_file_is_owned_by_root(built):
    listing = subprocess.run(["dpkg-deb", "-c", str(built.deb)], capture_output=True, text=True, check=True).stdout
    owners = {line.split()[1] for line in listing.splitlines()}
    assert owners == {"root/root"}


def test_conffiles_are_the_etc_files(built):
    assert set((built.control / "conffiles").read_text().split()) == CONFFILES


def test_depends_on_the_debian_python_modules(built):
    control = (built.control / "control").read_text()
    depends = next(ln for ln in control.splitlines() if ln.startswith("Depends:"))
    for pkg in ("python3-pydbus", "python3-gi", "python3-yaml", "python3-sdnotify", "python3:any"):
        assert re.search(rf"(^|[ ,]){re.escape(pkg)}($|[ ,(])", depends.split(":", 1)[1]), depends
    assert "nvidia" not in depends  # not in Debian; see docs/packaging.md


def test_recommends_bash_completion(built):
    """Without bash-completion the shipped completion file is never loaded."""
    control = (built.control / "control").read_text()
    recommends = next((ln for ln in control.splitlines() if ln.startswith("Recommends:")), "Recommends:")
    assert re.search(r"(^|[ ,])bash-completion($|[ ,(])", recommends.split(":", 1)[1]), control


def test_installed_metadata_names_the_license(built):
    metadata = built.dist_packages / f"migmanagerd-{__version__}.dist-info" / "METADATA"
    assert "License: Apache-2.0" in metadata.read_text().splitlines()


def test_license_is_not_the_deprecated_table():
    """setuptools >= 77 deprecates `license = {text = ...}` (an error after 2027-02-18)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not isinstance(project.get("license"), dict), project.get("license")
    assert "license" in project or "license" in project.get("dynamic", [])


def test_debians_setuptools_reads_the_license_without_a_warning(tmp_path):
    """setuptools 66 (bookworm) builds the .deb: the metadata must not use a form it rejects
    (the SPDX string, setuptools >= 77) nor one it warns about."""
    src, meta = tmp_path / "src", tmp_path / "meta"
    src.mkdir()
    meta.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "migmanagerd", src / "migmanagerd", ignore=shutil.ignore_patterns("__pycache__"))
    probe = (
        "import sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "# setuptools 66 says so of every [tool.setuptools] table; not about the license\n"
        "warnings.filterwarnings('ignore', message='Support for .*tool.setuptools.* is still .beta')\n"
        "import setuptools.build_meta as b\n"
        "out = sys.argv[1]  # setup() rewrites sys.argv\n"
        "d = b.prepare_metadata_for_build_wheel(out)\n"
        "with open(f'{out}/{d}/METADATA') as f:\n"
        "    print(f.read())\n"
    )
    proc = subprocess.run([SYSTEM_PYTHON, "-c", probe, str(meta)], cwd=src, capture_output=True,
                          text=True, env={"PATH": SYSTEM_PATH, "HOME": str(tmp_path), "LANG": "C.UTF-8"})
    if proc.returncode != 0 and "No module named 'setuptools'" in proc.stderr:
        pytest.skip("python3-setuptools is not installed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "License: Apache-2.0" in proc.stdout.splitlines()


def _installed_commands(built: Built) -> list[str]:
    probe = (
        "import argparse\n"
        "from migmanagerd.cli.main import build_parser\n"
        "for a in build_parser()._actions:\n"
        "    if isinstance(a, argparse._SubParsersAction):\n"
        "        print('\\n'.join(a.choices))\n"
    )
    env = {"PATH": SYSTEM_PATH, "PYTHONPATH": str(built.dist_packages)}
    proc = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, env=env, cwd=built.work)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_man_page_documents_every_installed_command(built):
    text = gzip.decompress((built.root / "usr/share/man/man8/migmanagerd.8.gz").read_bytes()).decode()
    assert text.startswith('.\\" Generated by tools/gen_manpage.py')
    commands = _installed_commands(built)
    assert commands
    for name in commands:
        assert f'.SS "migmanagerd {name}"' in text or f"Also called \\fB{name}\\fR" in text, name
    for section in ("FILES", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"):
        assert f"\n.SH {section}\n" in text


def test_completion_completes_every_installed_command(built):
    script = built.root / "usr/share/bash-completion/completions/migmanagerd"
    driver = ('source "$1"; COMP_WORDS=(migmanagerd ""); COMP_CWORD=1; _migmanagerd; '
              'printf "%s\\n" "${COMPREPLY[@]}"; complete -p migmanagerd')
    proc = subprocess.run(["bash", "-c", driver, "bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    *words, registration = proc.stdout.split("\n")[:-1]
    assert sorted(words) == sorted(_installed_commands(built))
    assert registration == "complete -F _migmanagerd migmanagerd"


# ---- maintainer scripts, run against stand-ins for systemctl and friends ------------------

UNIT_ACTION = re.compile(r"deb-systemd-invoke|invoke-rc\.d|systemctl\b[^\n]*\b(start|stop|restart|try-restart|reload-or-restart)\b")


def test_maintainer_scripts_contain_no_unit_start_stop_or_restart(built):
    """The branches that act on units run only where /run/systemd/system exists, which a
    test machine may lack; so read the scripts as well as running them."""
    found = {}
    for script in MAINTAINER_SCRIPTS:
        path = built.control / script
        if path.exists():
            hits = [ln.strip() for ln in path.read_text().splitlines() if UNIT_ACTION.search(ln)]
            if hits:
                found[script] = hits
    assert not found



@pytest.fixture(scope="module")
def scripts_run(built, tmp_path_factory):
    """Run the maintainer scripts through install, upgrade, remove and purge with every
    tool they call replaced by a recorder; returns (recorded calls per step, fake root)."""
    stubs = tmp_path_factory.mktemp("stubs")
    calls = stubs / "calls.log"
    for tool in ("systemctl", "deb-systemd-helper", "deb-systemd-invoke", "invoke-rc.d",
                 "py3compile", "py3clean", "pypy3compile", "service"):
        stub = stubs / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexit 0\n')
        stub.chmod(0o755)
    fake_root = tmp_path_factory.mktemp("fakeroot")
    state_dir = fake_root / "var/lib/nvidia-mig-manager"
    state_dir.mkdir(parents=True)
    (state_dir / "state.json").write_text("{}")
    env = {"PATH": f"{stubs}:{SYSTEM_PATH}", "DPKG_ROOT": str(fake_root), "DPKG_MAINTSCRIPT_PACKAGE": "migmanagerd"}
    steps = [
        ("install", "preinst", ["install"]), ("install", "postinst", ["configure", ""]),
        ("upgrade", "prerm", ["upgrade", __version__]), ("upgrade", "preinst", ["upgrade", "0.0.1"]),
        ("upgrade", "postrm", ["upgrade", __version__]), ("upgrade", "postinst", ["configure", "0.0.1"]),
        ("remove", "prerm", ["remove"]), ("remove", "postrm", ["remove"]),
    ]
    recorded: dict[str, list[str]] = {}
    state_after_remove = None
    for step, script, args in steps + [("purge", "postrm", ["purge"])]:
        if step == "purge":
            state_after_remove = state_dir.exists()
        path = built.control / script
        if not path.exists():
            continue
        calls.write_text("")
        proc = subprocess.run(["sh", "-e", str(path), *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"{script} {args}: {proc.stderr}"
        recorded.setdefault(step, []).extend(calls.read_text().splitlines())
    return recorded, state_after_remove, state_dir.exists()


def test_install_enables_the_unit(scripts_run):
    recorded, _, _ = scripts_run
    assert f"deb-systemd-helper enable {UNIT}" in recorded["install"]


@pytest.mark.parametrize("step", ["install", "upgrade", "remove", "purge"])
def test_no_maintainer_script_starts_stops_or_restarts_a_unit(scripts_run, step):
    recorded, _, _ = scripts_run
    moves = [c for c in recorded.get(step, [])
             if c.startswith(("deb-systemd-invoke", "invoke-rc.d", "service"))
             or re.match(r"systemctl .*\b(start|stop|restart|try-restart|reload-or-restart|isolate)\b", c)]
    assert not moves, f"{step} would change a running unit: {moves}"


def test_purge_removes_the_state_dir_and_remove_keeps_it(scripts_run):
    _, after_remove, after_purge = scripts_run
    assert after_remove is True
    assert after_purge is False


# ---- lintian ------------------------------------------------------------------------------


def test_lintian_reports_no_errors(built):
    if shutil.which("lintian", path=SYSTEM_PATH) is None:
        pytest.skip("lintian is not installed: cannot lint the package")
    proc = subprocess.run(["lintian", "--fail-on", "error", str(built.deb)],
                          capture_output=True, text=True, env={"PATH": SYSTEM_PATH, "HOME": str(built.work)})
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("E:")]
    assert not errors and proc.returncode == 0, proc.stdout + proc.stderr
