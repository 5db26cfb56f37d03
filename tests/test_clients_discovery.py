"""GPU holder discovery: real processes in real units, on the simulated node."""

from __future__ import annotations

import os
import subprocess

import pytest

from migmanagerd.clients.discovery import (
    GpuBusy,
    GpuHolder,
    check_holders,
    find_gpu_holders,
    read_cmdline,
)
from migmanagerd.clients.systemd import SystemdManager
from migmanagerd.errors import EXIT_FAILED
from migmanagerd.gpu.backend import GpuProcess
from migmanagerd.gpu.sim import SimBackend


@pytest.fixture
def sim(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGMANAGERD_SIM_NODE", "2xA100-SXM4-40GB")
    return SimBackend(tmp_path / "node.json")


@pytest.fixture
def manager(systemd_user, monkeypatch):
    for key, value in systemd_user.env.items():
        monkeypatch.setenv(key, value)
    mgr = SystemdManager.connect()
    yield mgr
    mgr.close()


def test_real_process_maps_to_its_real_unit(systemd_user, manager, sim):
    systemd_user.write_unit("c-train.service", "[Service]\nExecStart=/bin/sleep 1000\n")
    systemd_user.daemon_reload()
    systemd_user.systemctl("start", "c-train.service")
    pid = int(systemd_user.prop("c-train.service", "MainPID"))
    sim.attach(1, pid)
    holders = find_gpu_holders(sim, manager, [0, 1])
    assert holders == [GpuHolder(gpu_index=1, pid=pid, cmdline="/bin/sleep 1000", unit="c-train.service")]
    # Listed: nothing more to stop. Unlisted: refused by default, stopped on request.
    assert check_holders(holders, ["c-train.service"], "refuse") == ()
    assert check_holders(holders, ["c-other.service"], "stop") == ("c-train.service",)
    with pytest.raises(GpuBusy) as info:
        check_holders(holders, ["c-other.service"], "refuse")
    message = str(info.value)
    assert f"GPU 1 PID {pid} '/bin/sleep 1000' (unit c-train.service)" in message
    assert "discover: stop" in message


def test_process_outside_any_service_is_refused_even_with_discover_stop(systemd_user, manager, sim):
    # Started by us, not by systemd: outside the manager's cgroup tree, so it
    # has no unit (on a real node a shell user's process is in a session
    # scope, which discovery refuses the same way).
    proc = subprocess.Popen(["/bin/sleep", "1000"])
    try:
        sim.attach(0, proc.pid)
        holders = find_gpu_holders(sim, manager, [0])
        assert len(holders) == 1
        assert holders[0].unit is None
        with pytest.raises(GpuBusy) as info:
            check_holders(holders, [], "stop")
        assert f"PID {proc.pid} '/bin/sleep 1000' (no systemd unit)" in str(info.value)
        assert "End these processes" in str(info.value)
    finally:
        proc.kill()
        proc.wait()


def test_only_requested_gpus_are_looked_at(sim):
    sim.attach(0, os.getpid())
    assert find_gpu_holders(sim, None, [1]) == []
    holders = find_gpu_holders(sim, None, [0])
    assert [(h.gpu_index, h.pid, h.unit) for h in holders] == [(0, os.getpid(), None)]


def test_holder_without_unit_is_always_refused():
    holder = GpuHolder(0, 4242, "python train.py", None)
    with pytest.raises(GpuBusy) as info:
        check_holders([holder], ["kubelet.service"], "stop")
    err = info.value
    assert err.exit_code == EXIT_FAILED
    assert err.holders == (holder,)
    assert str(err).startswith("GPU in use, nothing changed: GPU 0 PID 4242 'python train.py' (no systemd unit)")
    assert "\n" not in str(err)


def test_every_refused_holder_is_named_and_extras_deduplicated():
    holders = [
        GpuHolder(0, 10, "dcgm", "nvidia-dcgm.service"),
        GpuHolder(0, 11, "exporter", "dcgm-exporter.service"),
        GpuHolder(1, 11, "exporter", "dcgm-exporter.service"),
        GpuHolder(1, 12, "train", "train.service"),
    ]
    assert check_holders(holders, ["nvidia-dcgm.service"], "stop") == ("dcgm-exporter.service", "train.service")
    with pytest.raises(GpuBusy) as info:
        check_holders(holders, ["nvidia-dcgm.service"], "refuse")
    assert [h.pid for h in info.value.holders] == [11, 11, 12]
    assert "PID 10" not in str(info.value)


def test_no_holders_nothing_to_do():
    assert check_holders([], [], "refuse") == ()


def test_bad_discover_mode_is_a_programming_error():
    with pytest.raises(ValueError):
        check_holders([], [], "kill")


def test_read_cmdline_edge_cases(tmp_path):
    assert read_cmdline(2**22 + 1) is None  # no such process
    fake = tmp_path / "77"
    fake.mkdir()
    (fake / "cmdline").write_bytes(b"")
    (fake / "comm").write_text("kworker/0:1\n")
    assert read_cmdline(77, tmp_path) == "[kworker/0:1]"
    (fake / "cmdline").write_bytes(b"python\0-c\0print('\x1b[31m')\0")
    assert read_cmdline(77, tmp_path) == "python -c print('?[31m')"
    (fake / "cmdline").write_bytes(b"x" * 500)
    assert len(read_cmdline(77, tmp_path)) == 160


class ListsDeadPids:
    """NVML may list a process until its context is torn down."""

    def __init__(self, pids):
        self.pids = pids

    def processes(self, index):
        return tuple(GpuProcess(index, pid) for pid in self.pids)


def test_exited_process_is_left_out():
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    backend = ListsDeadPids([proc.pid, os.getpid(), os.getpid()])
    holders = find_gpu_holders(backend, None, [0])
    assert [h.pid for h in holders] == [os.getpid()]


def test_holder_in_a_scope_is_refused_even_with_discover_stop():
    holder = GpuHolder(0, 5, "bash", "session-3.scope")
    with pytest.raises(GpuBusy, match=r"PID 5 'bash' \(unit session-3.scope\).*End these processes"):
        check_holders([holder], [], "stop")


class NoBus:
    def __init__(self):
        self.calls = 0

    def unit_by_pid(self, pid):
        from migmanagerd.clients.systemd import BusUnavailable

        self.calls += 1
        raise BusUnavailable("cannot look up the unit of PID 1: systemd is not on the D-Bus bus at X")


def test_without_systemd_holders_are_still_found_and_refused():
    backend = ListsDeadPids([os.getpid()])
    bus = NoBus()
    holders = find_gpu_holders(backend, bus, [0, 1])
    assert [(h.gpu_index, h.unit) for h in holders] == [(0, None), (1, None)]
    assert bus.calls == 1  # asked once, not once per process
    with pytest.raises(GpuBusy, match=f"PID {os.getpid()}"):
        check_holders(holders, [], "stop")
