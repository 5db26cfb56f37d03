"""Real boots: the installed package under systemd as PID 1 (systemd-nspawn).

Each scenario unpacks a fresh Debian 12 root from the cached base
(tests/boot_support.py), installs the .deb built once per session, configures
a simulated 8-GPU A100 node with GPU client units ordered like the real ones
(DCGM, dcgm-exporter and kubelet after nvidia-gpu-reset.target, slurmd after
nvidia-mig-manager.service itself) and hooks that log, boots it, and asserts
from inside the booted system. The unit's boot time is measured with
systemd-analyze and written to ``<cache>/boot-times.json`` (README table).

Skips, naming what is missing, only where debootstrap or nspawn cannot run.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import boot_support as bs
import pytest

pytestmark = [pytest.mark.boot, pytest.mark.timeout(900)]

UNIT = "nvidia-mig-manager.service"
TARGET = "nvidia-gpu-reset.target"
SIM_STATE = "/var/lib/migmanagerd-sim/node.json"
BOOT_ID_FILE = "/run/nvidia-mig-manager-boot-id"
HOOK_LOG = "/var/log/mig-hooks.log"
NODE = "8xA100-SXM4-40GB"
CLIENTS = ("nvidia-dcgm.service", "dcgm-exporter.service", "kubelet.service", "slurmd.service")

CONFIG = """\
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-enabled:
    - devices: all
      mig-enabled: true
      mig-devices: {}
  all-1g.5gb:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 7
  all-balanced:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 2
        "2g.10gb": 1
        "3g.20gb": 1
  too-many:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 8
"""

# Each hook appends "<boot id> <hook> <config>"; the unit's /proc boot id is
# the host's under ProtectControlGroups (docs/units.md), so the file the
# drop-in below writes is the one to read.
HOOKS = "version: v1\nhooks:\n" + "".join(
    f"  {hook}:\n    - command: /bin/sh\n      args: [\"-c\", \"echo $(cat {BOOT_ID_FILE}) {hook} "
    f"$MIG_PARTED_SELECTED_CONFIG >> {HOOK_LOG}\"]\n"
    for hook in ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit")
)

# The simulated node for the unit, and the container recipe of docs/units.md:
# the boot id as PID 1 sees it, for the reboot guard and the simulator.
SIM_DROPIN = f"""\
[Service]
Environment=MIGMANAGERD_BACKEND=sim MIGMANAGERD_SIM_STATE={SIM_STATE} MIGMANAGERD_SIM_NODE={NODE}
Environment=MIGMANAGERD_BOOT_ID_FILE={BOOT_ID_FILE} MIGMANAGERD_SIM_BOOT_ID_FILE={BOOT_ID_FILE}
ExecStartPre=+/bin/sh -c 'cat /proc/sys/kernel/random/boot_id > {BOOT_ID_FILE}'
"""

SHELL_ENV = {"MIGMANAGERD_BACKEND": "sim", "MIGMANAGERD_SIM_STATE": SIM_STATE}


def client_unit(name: str, after: str, extra: str = "") -> str:
    return (
        f"[Unit]\nDescription=test GPU client standing in for {name}\nAfter={after}\n{extra}"
        "[Service]\nExecStart=/bin/sleep infinity\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


# How state.json looked when each boot began, before the unit ran: the
# evidence of what the previous boot recorded before it rebooted.
STATE_SNAPSHOT_UNIT = """\
[Unit]
Description=test: keep state.json as this boot found it
DefaultDependencies=no
After=local-fs.target
Before=nvidia-mig-manager.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /var/log/boot-state; n=$(ls /var/log/boot-state | wc -l); \
cp /var/lib/nvidia-mig-manager/state.json /var/log/boot-state/$n.json || echo "{}" > /var/log/boot-state/$n.json'
[Install]
WantedBy=sysinit.target
"""


@pytest.fixture(scope="session")
def base_tarball() -> Path:
    why = bs.missing_requirement()
    if why:
        pytest.skip(f"cannot boot a container here: {why}")
    return bs.base_tarball()


@pytest.fixture
def new_node(base_tarball: Path, deb_package: Path, tmp_path: Path) -> Iterator:
    """Factory: a fresh root, the package installed (or not), configured."""
    made: list[bs.Container] = []

    def make(selection: str = "all-1g.5gb", *, install: bool = True, sim_init: tuple[str, ...] = ()) -> bs.Container:
        work = tmp_path / f"node{len(made)}"
        work.mkdir()
        c = bs.Container(root=work / "root", work=work, env=dict(SHELL_ENV))
        made.append(c)
        bs.unpack(base_tarball, c.root)
        configure(c, selection)
        if install:
            shutil.copy(deb_package, c.root / "root" / deb_package.name)
            bs.chroot(c.root, "dpkg", "-i", f"/root/{deb_package.name}")
            c.write("/etc/nvidia-mig-manager/config.yaml", CONFIG)
            c.write("/etc/nvidia-mig-manager/hooks.yaml", HOOKS)
            select(c, selection)
            init = ["migmanagerd", "sim", "init", "--node", NODE, "--state", SIM_STATE, *sim_init]
            bs.chroot(c.root, *init)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()
        # ours only: another session's containers may be running meanwhile
        assert not [d for d in bs.leftover_cgroups() if any(d.endswith(c.cgroup) for c in made)]


def configure(c: bs.Container, selection: str) -> None:
    c.write(f"/etc/systemd/system/{UNIT}.d/sim.conf", SIM_DROPIN)
    units = {
        "nvidia-dcgm.service": client_unit("DCGM", TARGET),
        "dcgm-exporter.service": client_unit("dcgm-exporter", f"nvidia-dcgm.service {TARGET}",
                                             "Requires=nvidia-dcgm.service\n"),
        "kubelet.service": client_unit("kubelet", TARGET),
        # After= the service itself, not the target: a natural thing to write
        "slurmd.service": client_unit("slurmd", UNIT),
        "boot-state-snapshot.service": STATE_SNAPSHOT_UNIT,
    }
    for name, text in units.items():
        c.write(f"/etc/systemd/system/{name}", text)
        wants = "sysinit.target.wants" if name.startswith("boot-state") else "multi-user.target.wants"
        link = c.root / "etc/systemd/system" / wants / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"/etc/systemd/system/{name}")


def select(c: bs.Container, name: str) -> None:
    """The selector drop-in, as `migmanagerd select` writes it (no fit check:
    a config that does not fit is selectable by hand)."""
    c.write(f"/etc/systemd/system/{UNIT}.d/override.conf", f'[Service]\nEnvironment="MIG_PARTED_SELECTED_CONFIG={name}"\n')


def hook_lines(c: bs.Container) -> list[list[str]]:
    """Per boot (in order of the boot ids' first appearance), the hooks run."""
    if not c.exists(HOOK_LOG):
        return []
    boots: dict[str, list[str]] = {}
    for line in c.read(HOOK_LOG).splitlines():
        boot, hook, *_ = line.split()
        boots.setdefault(boot, []).append(hook)
    return list(boots.values())


def mono(c: bs.Container, unit: str, prop: str) -> int:
    return int(c.show(unit, prop))


def unit_time_s(c: bs.Container) -> float:
    """The unit's line of `systemd-analyze blame`, in seconds."""
    out = c.sh("systemd-analyze blame --no-pager").stdout
    for line in out.splitlines():
        if line.split()[-1:] == [UNIT]:
            return parse_span(" ".join(line.split()[:-1]))
    raise AssertionError(f"{UNIT} not in systemd-analyze blame:\n{out}")


def parse_span(text: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)(ms|us|µs|s|min)", text):
        total += float(value) * {"ms": 1e-3, "us": 1e-6, "µs": 1e-6, "s": 1.0, "min": 60.0}[unit]
    return total


def record_time(kind: str, seconds: float) -> None:
    path = bs.cache_dir() / "boot-times.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    doc[kind] = round(seconds, 3)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{UNIT} on a {kind} boot: {seconds:.3f} s (systemd-analyze blame)")


def assert_clients_started_after_the_unit(c: bs.Container) -> None:
    done = mono(c, UNIT, "ActiveEnterTimestampMonotonic")
    assert done > 0
    for client in CLIENTS:
        assert c.show(client, "ActiveState") == "active", client
        started = mono(c, client, "ExecMainStartTimestampMonotonic")
        assert started > done, f"{client} started at {started} before {UNIT} finished at {done}"
    chain = c.sh("systemd-analyze critical-chain --no-pager kubelet.service").stdout
    assert TARGET in chain and UNIT in chain, chain
    assert chain.index(TARGET) < chain.index(UNIT), chain  # listed from the top: the target after the unit


def gpus(c: bs.Container) -> list[dict]:
    return c.sim_json()["gpus"]


def profiles(gpu: dict) -> list[str]:
    return sorted(i["profile"] for i in gpu["instances"])


# --- scenarios -------------------------------------------------------------------------------


def test_first_boot_applies_the_selection_before_any_client_starts(new_node):
    c = new_node("all-1g.5gb")
    c.boot()
    assert c.wait_booted() == "running", c.journal(f"-u {UNIT}")
    assert c.show(UNIT, "Result") == "success"
    assert c.show(UNIT, "ExecMainStatus") == "0"
    assert all(g["mig_enabled"] and profiles(g) == ["1g.5gb"] * 7 for g in gpus(c))
    assert_clients_started_after_the_unit(c)
    assert hook_lines(c) == [["apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit"]]
    status = c.status_json()
    assert status["last_run"]["result"] == "ok" and status["last_run"]["config"] == "all-1g.5gb"
    assert status["matches"] is True
    log = c.journal(f"-u {UNIT}")
    assert "Failed" not in log, log
    # messages count what happened: at boot no client runs yet, so none is
    # stopped (the shipped clients.yaml also lists units not installed here)
    assert "no GPU client was running before the mode change" in log, log
    assert not re.search(r"stopp(ing|ed) \d+ GPU client", log), log
    assert "GPU 0 (1/8): " in log and "GPU 7 (8/8): " in log and "(0/8)" not in log


def test_select_and_reboot_applies_the_new_selection_without_a_mode_change(new_node):
    c = new_node("all-1g.5gb")
    c.boot()
    c.wait_booted()
    modes_before = c.sim_json()["ops"]["set_mode"]
    c.sh("migmanagerd select all-balanced")
    assert c.reboot() == "running", c.journal(f"-u {UNIT}")
    record_time("re-created layout", unit_time_s(c))
    assert all(profiles(g) == ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"] for g in gpus(c))
    assert c.sim_json()["ops"]["set_mode"] == modes_before  # no MIG mode change
    assert hook_lines(c)[1] == ["apply-start", "pre-apply-config", "apply-exit"]
    assert_clients_started_after_the_unit(c)
    assert c.status_json()["last_run"]["config"] == "all-balanced"
    # a client ordered After= the service itself: queued, never waited for
    c.sh("migmanagerd select all-1g.5gb")
    c.sh(f"systemctl restart {UNIT}", timeout=60)
    assert c.show(UNIT, "Result") == "success"
    log = c.journal(f"-u {UNIT} -n 200")
    assert f"enqueued slurmd.service (ordered after {UNIT})" in log, log
    assert "stopped 4 GPU client(s) before the config change" in log, log
    assert "GPU clients: 0 started, 4 enqueued" in log, log
    assert all(profiles(g) == ["1g.5gb"] * 7 for g in gpus(c))


def test_a_selection_that_does_not_fit_gives_a_degraded_boot_with_clients_running(new_node):
    c = new_node("too-many")
    c.boot()
    assert c.wait_booted() == "degraded"
    assert c.show(UNIT, "Result") == "exit-code"
    assert c.show(UNIT, "ExecMainStatus") == "2"
    log = c.journal(f"-u {UNIT}")
    assert "config 'too-many' does not fit this node" in log and "at most 7" in log, log
    for client in CLIENTS:
        assert c.show(client, "ActiveState") == "active", client
    assert c.sim_json()["ops"]["set_mode"] == 0  # nothing was touched
    assert hook_lines(c) == []


def test_reboot_once_path_reboots_exactly_once_and_finishes_the_run_first(new_node):
    c = new_node("all-1g.5gb", sim_init=("--no-reset",))
    c.boot()
    assert c.wait_booted(boot=2) == "running", c.journal(f"-u {UNIT}")
    assert c.boots_started() == 2 and c.boot_exits() == [bs.EXIT_REBOOT]
    previous = c.journal(f"-b -1 -u {UNIT}")
    assert previous.count("rebooting once") == 1, previous
    assert "Failed with result" not in previous and "status=15/TERM" not in previous, previous
    assert previous.index("apply-exit") < previous.index("reboot requested"), previous
    # boot 1: the mode change, apply-exit once, then the reboot; boot 2: the layout
    assert hook_lines(c) == [["apply-start", "pre-apply-mode", "apply-exit"],
                             ["apply-start", "pre-apply-config", "apply-exit"]]
    recorded = json.loads(c.read("/var/log/boot-state/1.json"))  # as boot 2 found it
    assert recorded["last_run"]["result"] == "reboot-required", recorded
    assert recorded["reboot_guard"]["config"] == "all-1g.5gb", recorded
    assert all(g["mig_enabled"] and profiles(g) == ["1g.5gb"] * 7 for g in gpus(c))
    status = c.status_json()
    assert status["last_run"]["result"] == "ok" and status["reboot_guard"] is None
    assert "left stopped" not in c.journal(f"-u {UNIT}")
    assert_clients_started_after_the_unit(c)


def test_a_reboot_that_did_not_help_fails_clearly_and_does_not_loop(new_node):
    c = new_node("all-1g.5gb", sim_init=("--no-reset", "--mode-lost-on-reboot"))
    c.boot()
    assert c.wait_booted(boot=2) == "degraded"
    assert c.show(UNIT, "Result") == "exit-code" and c.show(UNIT, "ExecMainStatus") == "1"
    log = c.journal(f"-u {UNIT}")
    assert "not rebooting again" in log, log
    assert "--rearm-reboot" in log
    for client in CLIENTS:
        assert c.show(client, "ActiveState") == "active", client
    # no third boot: the container is still up on its second
    assert not c.wait_boots_started(3, timeout=5)
    assert c.boots_started() == 2 and c.pid1() is not None


def test_package_install_upgrade_remove_purge_reinstall_without_reboot(new_node, deb_package, tmp_path):
    c = new_node("all-disabled", install=False)
    newer = bs.with_version(deb_package, deb_package.name.split("_")[1] + "+boottest1",
                            tmp_path / "migmanagerd_newer_all.deb", unit_comment="# changed by the upgrade\n")
    for deb in (deb_package, newer):
        shutil.copy(deb, c.root / "root" / deb.name)
    c.boot()
    c.wait_booted()

    def unit_says(**want: str) -> None:
        got = {k: c.show(UNIT, k) for k in want}
        assert got == want

    c.sh(f"dpkg -i /root/{deb_package.name}")
    unit_says(LoadState="loaded", ActiveState="inactive", UnitFileState="enabled", NeedDaemonReload="no")
    c.sh(f"systemctl restart {UNIT}", timeout=60)
    unit_says(ActiveState="active", Result="success")
    invocation = c.show(UNIT, "InvocationID")

    c.sh(f"dpkg -i /root/{newer.name}")  # an upgrade: reloaded, not restarted
    unit_says(LoadState="loaded", ActiveState="active", NeedDaemonReload="no", InvocationID=invocation)

    c.sh("dpkg -r migmanagerd")
    unit_says(LoadState="not-found", ActiveState="inactive")

    c.sh(f"dpkg -i /root/{deb_package.name}")  # reinstall without a reboot
    unit_says(LoadState="loaded", NeedDaemonReload="no")
    c.sh(f"systemctl restart {UNIT}", timeout=60)
    unit_says(ActiveState="active", Result="success")

    c.sh("dpkg -P migmanagerd")
    unit_says(LoadState="not-found", ActiveState="inactive")
    assert not c.exists("/var/lib/nvidia-mig-manager")
    c.sh(f"dpkg -i /root/{deb_package.name}")
    unit_says(LoadState="loaded", NeedDaemonReload="no")
    verify = c.sh(f"systemd-analyze verify {UNIT}", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_stale_journal_naming_an_uninstalled_client_does_not_fail_the_boot(new_node):
    """The sticky journal: a killed run's journal names slurmd-old.service, since
    uninstalled. The boot drops it with a warning and succeeds; status never
    called that dead run "in flight"."""
    c = new_node("all-enabled")
    journal = {"config": "all-enabled", "phase": "applying mode", "started_at": "2026-01-01T00:00:00Z",
               "pid": 4242, "stopped_units": ["slurmd-old.service", "kubelet.service"], "boot_id": "an-old-boot"}
    c.write("/var/lib/nvidia-mig-manager/state.json", json.dumps({"version": 1, "journal": journal}), mode=0o600)
    c.boot()
    assert c.wait_booted() == "running", c.journal(f"-u {UNIT}")
    log = c.journal(f"-u {UNIT}")
    assert "slurmd-old.service again: it is not-found now; dropped from the journal" in log, log
    status = c.status_json()
    assert status["journal"] is None and status["last_run"]["result"] == "ok"
    assert c.show("kubelet.service", "ActiveState") == "active"


def test_unit_boot_time_on_a_boot_that_changes_nothing(new_node):
    c = new_node("all-enabled")
    c.boot()
    c.wait_booted()
    assert "GPU" in c.journal(f"-u {UNIT}")  # boot 1 enabled MIG mode
    assert c.reboot() == "running"
    log = c.journal(f"-u {UNIT}")
    assert "nothing to do" in log, log
    assert len(hook_lines(c)) == 1  # boot 1 only: no hook runs when nothing changes
    record_time("no-op", unit_time_s(c))
