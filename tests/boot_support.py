"""Real boots for tests: a Debian 12 root with systemd as PID 1 in systemd-nspawn.

The recipe (docs/boot-testing.md has the why of each step):

* a base root made once with debootstrap and kept, as a tarball, in a cache
  directory outside the repository (``MIGMANAGERD_TEST_CACHE``, else
  ``$XDG_CACHE_HOME/migmanagerd-test``, else ``/var/tmp/migmanagerd-test-cache``),
  created when absent; it already holds the package's dependencies, so a
  scenario needs no network;
* per scenario a fresh copy unpacked from that tarball, the project's .deb
  installed with dpkg in a chroot, the node configured (simulated GPUs, client
  units, hooks that log);
* a launcher shell, in a cgroup of its own in the named and unified
  hierarchies, that runs ``systemd-nspawn -b`` and starts it again when the
  container reboots (exit 133), up to a bound, logging each boot;
* commands inside through ``nsenter`` into the container's PID 1, with a clean
  environment; every wait is bounded; ``close()`` powers the container off,
  kills what is left in the launcher's cgroups and removes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# systemd as PID 1 and what the package needs at run time (debian/control's
# Depends), so a scenario installs the .deb offline; man-db because
# `systemd-analyze verify` fails on units with Documentation=man: without it.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "man-db", "procps",
    "python3-gi", "python3-pydbus", "python3-yaml", "python3-sdnotify",
)
# Part of the cache key: change it when the way the base is made changes.
BASE_RECIPE = "1"
CGROUP_FS = Path("/sys/fs/cgroup")


def cgroup_bases() -> tuple[Path, ...]:
    """Where the launcher needs a cgroup of its own: the named systemd and the
    unified hierarchy on a hybrid host (verified on the build machines), the
    one tree on a host with cgroup v2 only (not verified here)."""
    if (CGROUP_FS / "cgroup.controllers").exists():
        return (CGROUP_FS,)
    return (CGROUP_FS / "systemd", CGROUP_FS / "unified")
CGROUP_PREFIX = "migmanagerd-boot-"
COMMAND_TIMEOUT_S = 60.0
BOOT_TIMEOUT_S = 120.0
POWEROFF_TIMEOUT_S = 60.0
DEBOOTSTRAP_TIMEOUT_S = 900.0
# nspawn's exit status when the container rebooted (systemd-nspawn(1)).
EXIT_REBOOT = 133
# A boot that outlives this is powered off by the launcher itself (SIGTERM to
# nspawn): a test process killed before its cleanup leaves nothing running
# for long.
BOOT_LIFETIME_S = 900


class BootError(RuntimeError):
    pass


def cache_dir() -> Path:
    if os.environ.get("MIGMANAGERD_TEST_CACHE"):
        return Path(os.environ["MIGMANAGERD_TEST_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "migmanagerd-test"
    return Path("/var/tmp/migmanagerd-test-cache")


def missing_requirement() -> str | None:
    """Why this machine cannot boot a container, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, systemd-nspawn)"
    for tool, package in (("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container"),
                          ("nsenter", "util-linux"), ("chroot", "coreutils"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            return f"{tool} not found (apt-get install {package})"
    for base in cgroup_bases():
        if not (base / "cgroup.procs").exists():
            return f"no cgroup hierarchy at {base} (the launcher needs a cgroup of its own there)"
    return None


def host_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 sources), else Debian's."""
    if os.environ.get("MIGMANAGERD_TEST_DEBIAN_MIRROR"):
        return os.environ["MIGMANAGERD_TEST_DEBIAN_MIRROR"]
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in sources.read_text().split("\n\n"):
                fields = dict(
                    line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#")
                )
                suites = fields.get("Suites", "").split()
                uris = fields.get("URIs", "").split()
                if SUITE in suites and uris and "security" not in uris[0]:
                    return uris[0]
    return DEFAULT_MIRROR


def base_tarball(cache: Path | None = None) -> Path:
    """The clean base root as a tarball, made with debootstrap on first use
    (minutes) and reused after that (seconds). One builder at a time: a
    second test session waits on the cache's lock instead of building too."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    mirror = host_mirror()
    key = hashlib.sha256("\n".join([BASE_RECIPE, SUITE, mirror, *BASE_PACKAGES]).encode()).hexdigest()[:12]
    tarball = cache / f"debian12-{key}.tar"
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file():
            return tarball
        build = cache / f"build-{os.getpid()}"
        shutil.rmtree(build, ignore_errors=True)
        root = build / "root"
        log = cache / "debootstrap.log"
        with log.open("w") as out:
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root), mirror],
                stdout=out, stderr=subprocess.STDOUT, env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
                timeout=DEBOOTSTRAP_TIMEOUT_S,
            )
        if proc.returncode != 0:
            shutil.rmtree(build, ignore_errors=True)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise BootError(f"debootstrap {SUITE} from {mirror} failed (exit {proc.returncode}):\n{tail}")
        # a persistent journal, so `journalctl -b -1` shows the boot before a reboot
        (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
        (root / "etc/hostname").write_text("gpu-node\n")
        # apt's and man-db's daily timers would only compete for the CPUs
        for timer in ("apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer"):
            with contextlib.suppress(FileNotFoundError):
                (root / "etc/systemd/system/timers.target.wants" / timer).unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cpf", str(partial), "."], check=True,
                       timeout=DEBOOTSTRAP_TIMEOUT_S)
        partial.rename(tarball)
        shutil.rmtree(build, ignore_errors=True)
        for old in cache.glob("debian12-*.tar"):
            if old != tarball:
                old.unlink()
    return tarball


def unpack(tarball: Path, root: Path) -> None:
    root.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)], check=True,
                   timeout=COMMAND_TIMEOUT_S * 3)


def chroot(root: Path, *argv: str, timeout: float = COMMAND_TIMEOUT_S * 3) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0:
        raise BootError(f"chroot {' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def with_version(deb: Path, version: str, out: Path, unit_comment: str = "") -> Path:
    """A copy of ``deb`` that says it is ``version`` (and whose unit file ends
    with ``unit_comment``, so the manager has a changed unit to reload): an
    upgrade without a second package build."""
    tree = out.with_suffix(".d")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=COMMAND_TIMEOUT_S)
    control = tree / "DEBIAN/control"
    lines = [f"Version: {version}" if line.startswith("Version:") else line
             for line in control.read_text().splitlines()]
    control.write_text("\n".join(lines) + "\n")
    if unit_comment:
        unit = tree / "usr/lib/systemd/system/nvidia-mig-manager.service"
        unit.write_text(unit.read_text() + unit_comment)
        # dpkg checks the md5sums only on request, but keep them true
        sums = tree / "DEBIAN/md5sums"
        digest = hashlib.md5(unit.read_bytes()).hexdigest()
        sums.write_text("".join(
            f"{digest}  {line.split(maxsplit=1)[1]}\n" if line.endswith("nvidia-mig-manager.service") else line + "\n"
            for line in sums.read_text().splitlines()
        ))
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True,
                   capture_output=True, timeout=COMMAND_TIMEOUT_S)
    shutil.rmtree(tree)
    return out


_LAUNCHER = """\
# $1 cgroup name, $2 machine name, $3 root, $4 boots log, $5 console log, $6 most boots
for base in {bases}; do echo $$ > "$base/$1/cgroup.procs" || exit 90; done
n=0
while [ "$n" -lt "$6" ]; do
    n=$((n + 1))
    echo "boot $n" >> "$4"
    timeout -k 30 {lifetime} systemd-nspawn -b -D "$3" --register=no --keep-unit --private-network -M "$2" \
        </dev/null >>"$5" 2>&1
    rc=$?
    echo "exit $n $rc" >> "$4"
    [ "$rc" -eq {reboot} ] || exit 0
done
echo "stopped after $n boots" >> "$4"
"""


@dataclass
class Container:
    """One booted (or bootable) copy of the base root."""

    root: Path
    work: Path
    name: str = field(default_factory=lambda: f"mmd{uuid.uuid4().hex[:8]}")
    env: dict[str, str] = field(default_factory=dict)  # for migmanagerd inside
    launcher: subprocess.Popen[bytes] | None = None

    @property
    def cgroup(self) -> str:
        return CGROUP_PREFIX + self.name

    @property
    def boots_log(self) -> Path:
        return self.work / "boots.log"

    @property
    def console_log(self) -> Path:
        return self.work / "console.log"

    # --- files --------------------------------------------------------------

    def write(self, path: str, text: str, mode: int = 0o644) -> Path:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
        return target

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()

    def exists(self, path: str) -> bool:
        return (self.root / path.lstrip("/")).exists()

    # --- boot ---------------------------------------------------------------

    def boot(self, max_boots: int = 4) -> None:
        """Start the launcher; returns at once (see wait_booted)."""
        for base in cgroup_bases():
            (base / self.cgroup).mkdir(exist_ok=True)
        script = self.work / "launch.sh"
        script.write_text(_LAUNCHER.format(bases=" ".join(str(b) for b in cgroup_bases()),
                                           reboot=EXIT_REBOOT, lifetime=BOOT_LIFETIME_S))
        self.launcher = subprocess.Popen(
            ["sh", str(script), self.cgroup, self.name, str(self.root), str(self.boots_log),
             str(self.console_log), str(max_boots)],
            env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}, stdin=subprocess.DEVNULL,
        )

    def boots_started(self) -> int:
        if not self.boots_log.exists():
            return 0
        return sum(1 for line in self.boots_log.read_text().splitlines() if line.startswith("boot "))

    def boot_exits(self) -> list[int]:
        if not self.boots_log.exists():
            return []
        return [int(line.split()[2]) for line in self.boots_log.read_text().splitlines() if line.startswith("exit ")]

    def pid1(self) -> int | None:
        """The container's PID 1: the first ``systemd`` below the launcher
        (launcher, timeout, nspawn, systemd)."""
        if self.launcher is None or self.launcher.poll() is not None:
            return None
        level = [self.launcher.pid]
        for _ in range(4):
            level = [child for pid in level for child in _children(pid)]
            for child in level:
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
        return None

    def wait_booted(self, boot: int = 1, timeout: float = BOOT_TIMEOUT_S) -> str:
        """Wait until boot number ``boot`` has finished starting up; returns
        `systemctl is-system-running` (running or degraded)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.launcher is not None and self.launcher.poll() is not None:
                raise BootError(f"the container is gone (boots: {self.boots_log_text()}); console:\n{self.console_tail()}")
            if self.boots_started() >= boot and self.pid1() is not None:
                proc = self.sh("systemctl is-system-running", check=False, timeout=10)
                last = proc.stdout.strip()
                if last in ("running", "degraded"):
                    return last
            time.sleep(0.5)
        raise BootError(f"boot {boot} did not finish in {timeout:g}s (last state {last!r}; boots: "
                        f"{self.boots_log_text()}); console:\n{self.console_tail()}")

    def wait_exited(self, timeout: float = POWEROFF_TIMEOUT_S) -> int | None:
        if self.launcher is None:
            return None
        try:
            return self.launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait_boots_started(self, n: int, timeout: float = BOOT_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.boots_started() >= n:
                return True
            if self.launcher is not None and self.launcher.poll() is not None:
                return self.boots_started() >= n
            time.sleep(0.3)
        return False

    def reboot(self, timeout: float = BOOT_TIMEOUT_S) -> str:
        n = self.boots_started()
        self.sh("systemctl reboot --no-block")
        if not self.wait_boots_started(n + 1, timeout):
            raise BootError(f"no boot {n + 1} after a reboot; boots: {self.boots_log_text()}")
        return self.wait_booted(n + 1, timeout)

    def close(self) -> None:
        """Power off, bounded; then kill whatever is left in our cgroups and
        remove them. Safe to call more than once, and after any failure."""
        if self.launcher is not None and self.launcher.poll() is None:
            if self.pid1() is not None:
                with contextlib.suppress(BootError, subprocess.TimeoutExpired):
                    self.sh("systemctl poweroff --no-block", check=False, timeout=10)
            if self.wait_exited(POWEROFF_TIMEOUT_S) is None:
                _kill_cgroup(self.cgroup)
                self.wait_exited(10)
        _kill_cgroup(self.cgroup)
        _remove_cgroup(self.cgroup)

    # --- inside -------------------------------------------------------------

    def sh(self, script: str, *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``/bin/sh -c script`` inside the booted container."""
        pid = self.pid1()
        if pid is None:
            raise BootError("the container is not running")
        argv = ["nsenter", "-t", str(pid), "-a", "/usr/bin/env", "-i", f"PATH={SYSTEM_PATH}", "LANG=C.UTF-8",
                *(f"{k}={v}" for k, v in {**self.env, **(env or {})}.items()), "/bin/sh", "-c", script]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise BootError(f"in the container: {script}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -P {prop} {unit}").stdout.strip()

    def journal(self, args: str = "-b") -> str:
        return self.sh(f"journalctl --no-pager -o short-monotonic {args}").stdout

    def status_json(self) -> dict:
        return json.loads(self.sh("migmanagerd status --json").stdout)

    def sim_json(self) -> dict:
        return json.loads(self.sh("migmanagerd sim show --json").stdout)

    # --- diagnostics --------------------------------------------------------

    def boots_log_text(self) -> str:
        return self.boots_log.read_text().replace("\n", "; ") if self.boots_log.exists() else "none"

    def console_tail(self, lines: int = 40) -> str:
        if not self.console_log.exists():
            return ""
        return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for base in cgroup_bases():
        tree = base / name
        if tree.is_dir():
            for procs in tree.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
    return pids


def _kill_cgroup(name: str) -> None:
    """SIGKILL every process in our launcher's cgroups (only the launcher, its
    nspawn and the container live there), a few rounds, bounded."""
    if not name.startswith(CGROUP_PREFIX):
        return
    for _ in range(20):
        pids = _cgroup_pids(name)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.25)


def _remove_cgroup(name: str) -> None:
    """nspawn leaves empty payload/ and supervisor/ sub-cgroups: depth first."""
    if not name.startswith(CGROUP_PREFIX):
        return
    for base in cgroup_bases():
        tree = base / name
        if not tree.is_dir():
            continue
        for d in sorted((d for d in tree.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)) + [tree]:
            with contextlib.suppress(OSError):
                d.rmdir()


def leftover_cgroups() -> list[str]:
    out = []
    for base in cgroup_bases():
        if base.is_dir():
            out.extend(str(d) for d in base.glob(CGROUP_PREFIX + "*"))
    return out
