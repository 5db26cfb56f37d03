"""The shipped systemd units: they verify, say what docs/units.md promises,
and the hardened service still does its job under a real systemd."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "systemd" / "nvidia-mig-manager.service"
TARGET = ROOT / "systemd" / "nvidia-gpu-reset.target"
# regression guard for `systemd-analyze security --offline=true` (docs/units.md
# records the exact figures: 9.5 unhardened, 5.7 hardened on systemd 252)
MAX_EXPOSURE = 6.0

LIST_KEYS = {"After", "Before", "Wants", "Requires", "Conflicts", "WantedBy", "Also", "RequiresMountsFor", "Documentation"}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (list settings split on whitespace and
    accumulated over repeated lines, as systemd does)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        values = out[section].setdefault(key, [])
        if key in LIST_KEYS:
            values.extend(value.split())
        else:
            values.append(value)
    return out


@pytest.fixture(scope="module")
def service() -> dict[str, dict[str, list[str]]]:
    return parse_unit(SERVICE.read_text())


@pytest.fixture(scope="module")
def target() -> dict[str, dict[str, list[str]]]:
    return parse_unit(TARGET.read_text())


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times: {values}"
    return values[0]


def test_service_type_and_notify(service) -> None:
    assert one(service, "Service", "Type") == "oneshot"
    assert one(service, "Service", "RemainAfterExit") == "yes"
    assert one(service, "Service", "NotifyAccess") == "main"
    assert one(service, "Service", "ExecStart") == "/usr/bin/migmanagerd service"
    assert one(service, "Service", "TimeoutStartSec") == "15min"
    assert one(service, "Service", "StateDirectory") == "nvidia-mig-manager"
    assert one(service, "Service", "StateDirectoryMode") == "0700"


def test_service_ordering(service) -> None:
    unit = service["Unit"]
    assert one(service, "Unit", "DefaultDependencies") == "no"
    for dep in (
        "local-fs.target",
        "sysinit.target",
        "systemd-modules-load.service",
        "nvidia-persistenced.service",
        "nvidia-fabricmanager.service",
        "dbus.socket",
        "dbus.service",
    ):
        assert dep in unit["After"], dep
    assert {"nvidia-gpu-reset.target", "shutdown.target"} <= set(unit["Before"])
    assert unit["Conflicts"] == ["shutdown.target"]
    # ordering only: the driver helpers are not hard requirements
    for key in ("Requires", "Wants"):
        assert "nvidia-persistenced.service" not in unit.get(key, [])
        assert "nvidia-fabricmanager.service" not in unit.get(key, [])
    assert "/var/lib/nvidia-mig-manager" in unit["RequiresMountsFor"]


def test_service_install(service) -> None:
    assert set(service["Install"]["WantedBy"]) == {"multi-user.target", "nvidia-gpu-reset.target"}
    assert service["Install"]["Also"] == ["nvidia-gpu-reset.target"]


def test_target(target) -> None:
    assert target["Install"]["WantedBy"] == ["multi-user.target"]
    assert "nvidia-mig-manager.service" in target["Unit"]["After"]
    assert "GPU clients" in one(target, "Unit", "Description")


def test_hardening_keeps_what_the_service_needs(service) -> None:
    s = {k: v for k, v in service["Service"].items()}
    # devices, /sys reset files, kernel modules must stay reachable
    for key in ("PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules", "DevicePolicy", "DeviceAllow", "ProcSubset"):
        assert key not in s, key
    # implies DeviceAllow=char-rtc, which locks out /dev/nvidia* on older systemd
    assert "ProtectClock" not in s
    # hooks may run JITs (and PyGObject uses libffi closures)
    assert "MemoryDenyWriteExecute" not in s
    assert one(service, "Service", "ProtectSystem") == "yes"  # /etc and /var stay writable
    assert "User" not in s  # NVML needs root for MIG changes


def _copy_for_verify(tmp_path: Path) -> tuple[Path, Path]:
    """systemd-analyze verify checks that ExecStart= exists; point it at one
    that does (the real binary is installed by the package)."""
    d = tmp_path / "units"
    d.mkdir()
    svc = d / SERVICE.name
    svc.write_text(SERVICE.read_text().replace("ExecStart=/usr/bin/migmanagerd service", "ExecStart=/bin/true service"))
    tgt = d / TARGET.name
    shutil.copy(TARGET, tgt)
    return svc, tgt


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found (apt-get install systemd)")
    return path


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    tool = _need("systemd-analyze")
    svc, tgt = _copy_for_verify(tmp_path)
    # --man=no: the man page ships with the package, not in the checkout
    proc = subprocess.run([tool, "verify", "--man=no", str(svc), str(tgt)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    tool = _need("systemd-analyze")
    svc, _ = _copy_for_verify(tmp_path)
    svc.write_text(svc.read_text().replace("Type=oneshot", "Type=oneshoot"))
    proc = subprocess.run([tool, "verify", "--man=no", str(svc)], capture_output=True, text=True, timeout=60)
    assert "oneshoot" in proc.stderr


def _exposure(tool: str, unit: Path) -> float:
    proc = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(unit)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert m, proc.stdout[-500:] + proc.stderr[-500:]
    return float(m.group(1))


def test_security_exposure(tmp_path: Path) -> None:
    tool = _need("systemd-analyze")
    svc, _ = _copy_for_verify(tmp_path)
    hardened = _exposure(tool, svc)
    text = svc.read_text()
    head, rest = text.split("# --- hardening", 1)
    bare = tmp_path / "bare" / SERVICE.name
    bare.parent.mkdir()
    bare.write_text(head + "[Install]" + rest.split("[Install]", 1)[1])
    unhardened = _exposure(tool, bare)
    print(f"\nsystemd-analyze security --offline=true: unhardened {unhardened}, hardened {hardened}")
    assert hardened <= MAX_EXPOSURE
    assert hardened < unhardened


# --- the hardened unit under a real systemd ---------------------------------------

_PROBE = textwrap.dedent(
    r'''
    """Runs as the unit's main process with the unit's sandbox."""
    import errno, json, os, socket, subprocess, sys, time
    t0 = time.monotonic()

    def notify(msg):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        addr = os.environ["NOTIFY_SOCKET"]
        s.connect("\0" + addr[1:] if addr.startswith("@") else addr)
        s.send(msg.encode())
        s.close()

    notify("EXTEND_TIMEOUT_USEC=30000000")
    r = {}
    r["python"] = True
    import migmanagerd.service.state  # the package imports under the filter
    r["bash_hook"] = subprocess.run(["/bin/bash", "-c", "ulimit -n >/dev/null && echo hook-ok"],
                                    capture_output=True, text=True).stdout.strip() == "hook-ok"
    with open("/dev/null", "r+b"):
        r["dev_null"] = True
    with open("/dev/urandom", "rb") as f:
        r["dev_urandom"] = len(f.read(4)) == 4
    r["sys_pci"] = os.path.isdir("/sys/bus/pci/devices") or not os.path.exists("/sys/bus/pci")
    try:
        import pydbus
        bus = pydbus.SystemBus()
        r["dbus"] = bool(bus.get("org.freedesktop.systemd1").Version)
    except Exception as exc:
        r["dbus"] = repr(exc)

    def denied(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            return exc.errno in (errno.EROFS, errno.EPERM, errno.EACCES)
        os.close(fd)
        os.unlink(path)
        return False

    r["usr_read_only"] = denied("/usr/.migmanagerd-probe")
    r["home_read_only"] = denied("/root/.migmanagerd-probe")
    try:
        time.clock_settime(time.CLOCK_REALTIME, time.time())
        r["clock_denied"] = False
    except PermissionError:
        r["clock_denied"] = True
    capbnd = int(next(l for l in open("/proc/self/status") if l.startswith("CapBnd:")).split()[1], 16)
    r["no_cap_sys_boot"] = not capbnd & (1 << 22)
    r["cap_sys_admin"] = bool(capbnd & (1 << 21))
    # outlive TimeoutStartSec=; only EXTEND_TIMEOUT_USEC= above keeps us alive
    time.sleep(max(0.0, float(sys.argv[2]) - (time.monotonic() - t0)))
    with open(sys.argv[1], "a") as f:
        f.write("service\n")
    print(json.dumps(r), flush=True)
    notify("STATUS=probe: hardened unit ok")
    '''
)


def test_hardened_unit_runs_under_real_systemd(systemd_user) -> None:
    root = systemd_user.root
    probe = root / "probe.py"
    probe.write_text(_PROBE)
    order_log = root / "order.log"
    results = root / "probe.out"
    for p in (order_log, results):
        p.unlink(missing_ok=True)
    outlive_s = 3.0
    text = SERVICE.read_text()
    text = text.replace(
        "ExecStart=/usr/bin/migmanagerd service",
        f"ExecStart={sys.executable} {probe} {order_log} {outlive_s}\n"
        f"StandardOutput=file:{results}\nEnvironment=PYTHONPATH={ROOT}",
    )
    text = text.replace("TimeoutStartSec=15min", "TimeoutStartSec=2s")
    # the private test bus and the probe live under /tmp; on a node the bus is
    # /run/dbus/system_bus_socket, which PrivateTmp= does not hide
    text = text.replace("PrivateTmp=yes", "PrivateTmp=no")
    # a user manager would put it under ~/.local/state; not what we test here
    text = re.sub(r"^StateDirectory.*\n", "", text, flags=re.M)
    systemd_user.write_unit("nvidia-mig-manager.service", text)
    systemd_user.write_unit("nvidia-gpu-reset.target", TARGET.read_text())
    # a GPU client, as operators write them: after the target
    systemd_user.write_unit(
        "gpu-client.service",
        "[Unit]\nWants=nvidia-gpu-reset.target\nAfter=nvidia-gpu-reset.target\n"
        f"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'echo client >> {order_log}'\n",
    )
    systemd_user.daemon_reload()
    systemd_user.systemctl("enable", "nvidia-mig-manager.service")

    systemd_user.systemctl("start", "gpu-client.service", timeout=60)

    assert systemd_user.prop("nvidia-mig-manager.service", "Result") == "success", (results.read_text()[-2000:] if results.exists() else "") + systemd_user.prop("nvidia-mig-manager.service", "ExecMainStatus") + (root / "systemd.log").read_text()[-3000:]
    assert systemd_user.prop("nvidia-mig-manager.service", "ActiveState") == "active"
    assert systemd_user.prop("nvidia-mig-manager.service", "SubState") == "exited"  # RemainAfterExit
    assert systemd_user.prop("nvidia-mig-manager.service", "StatusText") == "probe: hardened unit ok"
    assert systemd_user.prop("nvidia-mig-manager.service", "TimeoutStartUSec") == "2s"
    assert order_log.read_text().split() == ["service", "client"]
    r = json.loads(results.read_text())
    assert r == {
        "python": True,
        "bash_hook": True,
        "dev_null": True,
        "dev_urandom": True,
        "sys_pci": True,
        "dbus": True,
        "usr_read_only": True,
        "home_read_only": True,
        "clock_denied": True,
        "no_cap_sys_boot": True,
        "cap_sys_admin": True,
    }
