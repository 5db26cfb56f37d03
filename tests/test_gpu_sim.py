"""The simulated node obeys the hardware rules, with the codes NVML uses."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from migmanagerd.catalog.load import load_catalog
from migmanagerd.catalog.model import CiProfile, GiProfile, GpuModel
from migmanagerd.errors import UsageError
from migmanagerd.gpu import sim, sim_state
from migmanagerd.gpu.backend import BackendError
from migmanagerd.gpu.sim_faults import PROCESS_FAULTS, parse_faults, parse_latency

CATALOG = load_catalog()
A100 = CATALOG.find("A100-SXM4-40GB")


def pid_of(model: GpuModel, name: str) -> int:
    p = model.gi_profile(name)
    assert p is not None, name
    return p.nvml_id


P1G = pid_of(A100, "1g.5gb")
P1GME = pid_of(A100, "1g.5gb+me")
P2G = pid_of(A100, "2g.10gb")
P3G = pid_of(A100, "3g.20gb")
P4G = pid_of(A100, "4g.20gb")
P7G = pid_of(A100, "7g.40gb")


def ci_id(model: GpuModel, gi: str, ci: str) -> int:
    p = model.gi_profile(gi).ci_profile(ci)
    assert p is not None, ci
    return p.nvml_id


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("MIGMANAGERD_SIM_FAULTS", "MIGMANAGERD_SIM_LATENCY", "MIGMANAGERD_SIM_NODE", "MIGMANAGERD_SIM_STATE",
                "MIGMANAGERD_SIM_BOOT_ID_FILE"):
        monkeypatch.delenv(var, raising=False)
    PROCESS_FAULTS.reset()
    yield
    PROCESS_FAULTS.reset()


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "node.json"


def make(state: Path, spec: str = "2xA100-SXM4-40GB", **kw) -> sim.SimBackend:
    sim.init_node(state, spec, **kw)
    return sim.SimBackend(state)


def enabled(state: Path, spec: str = "2xA100-SXM4-40GB", **kw) -> sim.SimBackend:
    b = make(state, spec, **kw)
    for g in b.gpus():
        if g.mig_capable:
            b.set_mig_mode(g.index, True)
    b.reset([g.index for g in b.gpus()])
    return b


def code_of(excinfo) -> str:
    return excinfo.value.code


# --- node specs ---------------------------------------------------------------


def test_spec_mixed_models_case_insensitive(state):
    b = make(state, "2xh100-80gb,1xA30-24GB")
    gpus = b.gpus()
    assert [g.name for g in gpus] == [CATALOG.find("H100-80GB").product_names[0]] * 2 + [CATALOG.find("A30-24GB").product_names[0]]
    assert [b.model_of(g.index).name for g in gpus] == ["H100-80GB", "H100-80GB", "A30-24GB"]
    assert gpus[2].pci_device_id == 0x20B710DE
    assert all(g.mig_capable for g in gpus)


def test_spec_bare_pci_id_is_a_gpu_without_mig(state):
    b = make(state, "4xA100-SXM4-40GB,1x0x1FB010DE")
    display = b.gpus()[4]
    assert display.pci_device_id == 0x1FB010DE and not display.mig_capable
    assert b.mig_mode(4) == sim.MigMode(False, False)
    with pytest.raises(BackendError) as e:
        b.set_mig_mode(4, True)
    assert (e.value.gpu_index, code_of(e)) == (4, "NOT_SUPPORTED")
    with pytest.raises(BackendError) as e:
        b.create_gpu_instance(4, P1G, 0)
    assert code_of(e) == "NOT_SUPPORTED"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("8xNoSuchGPU", ["NoSuchGPU", "A100-SXM4-40GB"]),
        ("1x0x12345678", ["0x12345678", "10DE"]),
        ("", ["empty"]),
        ("2xA100-SXM4-40GB,", ["empty item"]),
        ("0xA100-SXM4-40GB", ["at least 1"]),
    ],
)
def test_bad_spec_is_a_usage_error_and_writes_nothing(state, spec, words):
    with pytest.raises(UsageError) as e:
        sim.init_node(state, spec)
    for w in words:
        assert w in str(e.value)
    assert not state.exists()


def test_gpu_uuids_stable_per_spec_and_index(state, tmp_path):
    a = [g.uuid for g in make(state, "3xA100-SXM4-40GB").gpus()]
    b = [g.uuid for g in make(tmp_path / "other.json", "3xA100-SXM4-40GB").gpus()]
    c = [g.uuid for g in make(tmp_path / "third.json", "3xH100-80GB").gpus()]
    assert a == b
    assert len(set(a)) == 3 and all(u.startswith("GPU-") for u in a)
    assert not set(a) & set(c)


def test_init_refuses_to_replace_without_force(state):
    make(state, "1xA100-SXM4-40GB")
    with pytest.raises(UsageError, match="--force"):
        sim.init_node(state, "2xH100-80GB")
    sim.init_node(state, "2xH100-80GB", force=True)
    assert len(sim.SimBackend(state).gpus()) == 2


def test_missing_state_names_the_variable_to_set(state, monkeypatch):
    with pytest.raises(UsageError, match="MIGMANAGERD_SIM_STATE"):
        sim.SimBackend()
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(state))
    with pytest.raises(UsageError, match="MIGMANAGERD_SIM_NODE"):
        sim.SimBackend()
    assert not state.exists()
    monkeypatch.setenv("MIGMANAGERD_SIM_NODE", "3xA30-24GB")
    b = sim.SimBackend()
    assert len(b.gpus()) == 3 and state.exists()


def test_corrupt_state_is_a_usage_error_naming_the_file(state):
    state.write_text("{not json")
    with pytest.raises(UsageError) as e:
        sim.SimBackend(state)
    assert str(state) in str(e.value)


def test_unknown_gpu_index_names_it(state):
    b = make(state, "2xA100-SXM4-40GB")
    with pytest.raises(BackendError) as e:
        b.create_gpu_instance(5, P1G, 0)
    assert e.value.gpu_index == 5 and code_of(e) == "INVALID_ARGUMENT" and "0..1" in str(e.value)


# --- MIG mode, reset and reboot -------------------------------------------------


def test_ampere_mode_change_pends_until_reset(state):
    b = make(state, "2xA100-SXM4-40GB")
    b.set_mig_mode(0, True)
    assert b.mig_mode(0) == sim.MigMode(current=False, pending=True)
    with pytest.raises(BackendError) as e:
        b.create_gpu_instance(0, P1G, 0)
    assert code_of(e) == "NOT_SUPPORTED" and "pending" in str(e.value)
    b.reset([0])
    assert b.mig_mode(0) == sim.MigMode(True, True)
    assert b.mig_mode(1) == sim.MigMode(False, False)


def test_ampere_mode_persists_across_reboot_and_pending_applies(state):
    b = make(state, "2xA100-SXM4-40GB")
    b.set_mig_mode(0, True)
    b.set_mig_mode(1, True)
    b.reset([0])
    sim.reboot(state)
    assert b.mig_mode(0) == sim.MigMode(True, True)  # kept (InfoROM)
    assert b.mig_mode(1) == sim.MigMode(True, True)  # pending took effect at boot


def test_hopper_mode_immediate_and_lost_on_reboot(state):
    b = make(state, "1xH100-80GB")
    b.set_mig_mode(0, True)
    assert b.mig_mode(0) == sim.MigMode(True, True)
    gi = b.create_gpu_instance(0, pid_of(b.model_of(0), "7g.80gb"), 0)
    assert gi.id == 0
    sim.reboot(state)
    assert b.mig_mode(0) == sim.MigMode(False, False)
    assert b.gpu_instances(0) == ()


def test_instances_vanish_on_reset_and_reboot(state):
    b = enabled(state)
    for i in (0, 1):
        gi = b.create_gpu_instance(i, P3G, 0)
        b.create_compute_instance(i, gi.id, ci_id(A100, "3g.20gb", "3g.20gb"))
    b.reset([0])
    assert b.gpu_instances(0) == () and len(b.gpu_instances(1)) == 1
    sim.reboot(state)
    assert b.gpu_instances(1) == ()
    assert b.mig_mode(1).current  # A100 keeps MIG mode


def test_process_on_gpu_blocks_mode_change_and_reset(state):
    b = make(state, "2xA100-SXM4-40GB")
    b.attach(0, os.getpid())
    assert [p.pid for p in b.processes(0)] == [os.getpid()]
    with pytest.raises(BackendError) as e:
        b.set_mig_mode(0, True)
    assert (e.value.gpu_index, code_of(e)) == (0, "IN_USE")
    b.set_mig_mode(1, True)
    with pytest.raises(BackendError) as e:
        b.reset([1, 0])
    assert (e.value.gpu_index, code_of(e)) == (0, "IN_USE")
    assert b.mig_mode(1) == sim.MigMode(False, True)  # the failed reset changed nothing
    b.detach(0, os.getpid())
    b.set_mig_mode(0, True)
    b.reset([0, 1])
    assert b.mig_mode(0).current and b.mig_mode(1).current


def test_dead_processes_do_not_hold_the_gpu(state):
    b = make(state, "1xA100-SXM4-40GB")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    b.attach(0, child.pid)
    assert b.processes(0) == ()
    b.set_mig_mode(0, True)  # no IN_USE


def test_reboot_drops_attached_processes(state):
    b = make(state, "1xA100-SXM4-40GB")
    b.attach(0, os.getpid())
    sim.reboot(state)
    assert b.processes(0) == ()


def test_no_reset_knob(state):
    b = make(state, "1xA100-SXM4-40GB", no_reset=True)
    assert b.reset_available(0) is False
    b.set_mig_mode(0, True)
    with pytest.raises(BackendError) as e:
        b.reset([0])
    assert code_of(e) == "NOT_SUPPORTED"
    assert b.mig_mode(0) == sim.MigMode(False, True)
    sim.reboot(state)  # the only way: a reboot
    assert b.mig_mode(0) == sim.MigMode(True, True)


# --- the node notices a real reboot (its recorded kernel boot id changed) ------


def booted(tmp_path, monkeypatch, boot_id: str) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text(boot_id + "\n")
    monkeypatch.setenv("MIGMANAGERD_SIM_BOOT_ID_FILE", str(boot))


def test_first_open_in_a_new_boot_applies_the_reboot_rules_once(state, tmp_path, monkeypatch):
    booted(tmp_path, monkeypatch, "boot-1")
    b = make(state, "2xA100-SXM4-40GB", no_reset=True)
    b.set_mig_mode(0, True)
    b.attach(1, os.getpid())
    assert sim_state.read_node(state).boot_id == "boot-1"
    assert sim.notice_reboot(state) is False  # same boot: nothing happens
    booted(tmp_path, monkeypatch, "boot-2")
    again = sim.SimBackend(state)
    assert again.mig_mode(0) == sim.MigMode(True, True)  # the pending mode applied at boot
    assert again.processes(1) == ()
    assert again.snapshot().ops["reboot"] == 1
    again.create_gpu_instance(0, P7G, 0)
    assert sim.SimBackend(state).gpu_instances(0) != ()  # opened again in the same boot: kept
    assert sim_state.read_node(state).ops["reboot"] == 1


def test_a_node_without_a_recorded_boot_id_is_not_rebooted(state, tmp_path, monkeypatch):
    booted(tmp_path, monkeypatch, "boot-1")
    b = enabled(state)
    b.create_gpu_instance(0, P7G, 0)
    doc = json.loads(state.read_text())
    del doc["boot_id"]  # written by a version that did not record one
    state.write_text(json.dumps(doc))
    booted(tmp_path, monkeypatch, "boot-2")
    assert sim.SimBackend(state).gpu_instances(0) != ()
    assert sim_state.read_node(state).boot_id == "boot-2"


def test_unreadable_boot_id_never_reboots(state, tmp_path, monkeypatch):
    booted(tmp_path, monkeypatch, "boot-1")
    b = enabled(state)
    b.create_gpu_instance(0, P7G, 0)
    monkeypatch.setenv("MIGMANAGERD_SIM_BOOT_ID_FILE", str(tmp_path / "missing"))
    assert sim.notice_reboot(state) is False
    assert sim.SimBackend(state).gpu_instances(0) != ()


def test_mode_lost_on_reboot_knob(state):
    sim.init_node(state, "1xA100-SXM4-40GB", no_reset=True, mode_lost_on_reboot=True)
    b = sim.SimBackend(state)
    b.set_mig_mode(0, True)
    sim.reboot(state)
    assert b.mig_mode(0) == sim.MigMode(False, False)  # the reboot did not help


def test_disable_with_instances_is_in_use(state):
    b = enabled(state)
    gi = b.create_gpu_instance(0, P7G, 0)
    with pytest.raises(BackendError) as e:
        b.set_mig_mode(0, False)
    assert code_of(e) == "IN_USE"
    b.destroy_gpu_instance(0, gi.id)
    b.set_mig_mode(0, False)
    assert b.mig_mode(0) == sim.MigMode(True, False)


# --- GPU instances ----------------------------------------------------------------


def test_create_gi_rules(state):
    b = enabled(state)
    with pytest.raises(BackendError) as e:
        b.create_gpu_instance(0, 99, 0)
    assert code_of(e) == "INVALID_ARGUMENT" and "99" in str(e.value)
    with pytest.raises(BackendError) as e:
        b.create_gpu_instance(0, P3G, 2)  # 3g starts at 0 or 4 only
    assert code_of(e) == "INVALID_ARGUMENT" and "[0, 4]" in str(e.value)
    b.create_gpu_instance(0, P4G, 0)
    with pytest.raises(BackendError) as e:
        b.create_gpu_instance(0, P2G, 2)  # overlaps the 4g
    assert code_of(e) == "INSUFFICIENT_RESOURCES" and "overlaps" in str(e.value)
    b.create_gpu_instance(0, P1GME, 4)
    with pytest.raises(BackendError) as e:
        b.create_gpu_instance(0, P1GME, 5)  # +me: one per GPU
    assert code_of(e) == "INSUFFICIENT_RESOURCES" and "at most 1" in str(e.value)
    assert [(g.profile_id, g.start, g.size) for g in b.gpu_instances(0)] == [(P4G, 0, 4), (P1GME, 4, 1)]


def test_create_gi_checks_compute_slice_budget():
    # A made-up GPU whose memory outnumbers its compute slices, so only the
    # compute budget can refuse the third instance.
    ci = CiProfile("1g.1gb", 0, 1, 1, (0,))
    model = GpuModel(
        "TEST-2C4M", ("NVIDIA TEST",), (0x1234,), compute_slices=2, memory_slices=4, memory_mib=4096,
        gi_profiles=(GiProfile("1g.1gb", 3, 0, 1, 1, 1024, 4, (0, 1, 2, 3), ci_profiles=(ci,)),),
        mig_mode_persistent=False, mig_mode_needs_reset=False,
    )

    class Cat:
        models = (model,)

        def find(self, text):
            return model if text.lower() == "test-2c4m" else None

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.json"
        sim.init_node(path, "1xTEST-2C4M", catalog=Cat())
        b = sim.SimBackend(path, catalog=Cat())
        b.set_mig_mode(0, True)
        b.create_gpu_instance(0, 3, 0)
        b.create_gpu_instance(0, 3, 1)
        with pytest.raises(BackendError) as e:
            b.create_gpu_instance(0, 3, 2)
        assert code_of(e) == "INSUFFICIENT_RESOURCES" and "compute slices" in str(e.value)


def test_exclusive_profiles_refused(state):
    b = enabled(state, "1xRTX-PRO-6000-Blackwell")
    m = b.model_of(0)
    group = m.exclusive_groups[0]
    first, second = m.gi_profile(group[0]), m.gi_profile(group[1])
    a = b.create_gpu_instance(0, first.nvml_id, first.placements[0])
    free = [s for s in second.placements if not second.placement(s).overlaps(first.placement(a.start))]
    with pytest.raises(BackendError) as e:
        b.create_gpu_instance(0, second.nvml_id, free[0])
    assert code_of(e) == "INSUFFICIENT_RESOURCES" and "coexist" in str(e.value)


def test_gi_ids_follow_hardware_pattern(state):
    b = enabled(state)
    ids = {}
    for s in (6, 0, 1):
        ids[("1g", s)] = b.create_gpu_instance(0, P1G, s).id
    ids[("2g", 4)] = b.create_gpu_instance(0, P2G, 4).id
    ids[("2g", 2)] = b.create_gpu_instance(0, P2G, 2).id
    assert ids == {("1g", 6): 13, ("1g", 0): 7, ("1g", 1): 8, ("2g", 4): 5, ("2g", 2): 4}
    assert b.create_gpu_instance(1, P7G, 0).id == 0


def test_destroy_gi_errors(state):
    b = enabled(state)
    with pytest.raises(BackendError) as e:
        b.destroy_gpu_instance(0, 3)
    assert code_of(e) == "NOT_FOUND"
    gi = b.create_gpu_instance(0, P3G, 4)
    b.create_compute_instance(0, gi.id, ci_id(A100, "3g.20gb", "1c.3g.20gb"))
    with pytest.raises(BackendError) as e:
        b.destroy_gpu_instance(0, gi.id)
    assert code_of(e) == "IN_USE" and e.value.gpu_index == 0
    assert len(b.gpu_instances(0)) == 1


# --- compute instances ---------------------------------------------------------------


def test_compute_instance_rules(state):
    b = enabled(state)
    gi = b.create_gpu_instance(0, P3G, 0)
    with pytest.raises(BackendError) as e:
        b.create_compute_instance(0, gi.id, ci_id(A100, "7g.40gb", "7g.40gb"))  # enum 4: no such CI in a 3g
    assert code_of(e) == "INVALID_ARGUMENT"
    with pytest.raises(BackendError) as e:
        b.create_compute_instance(0, 42, 0)
    assert code_of(e) == "NOT_FOUND"
    full = b.create_compute_instance(0, gi.id, ci_id(A100, "3g.20gb", "3g.20gb"))
    assert (full.start, full.size) == (0, 3)
    with pytest.raises(BackendError) as e:
        b.create_compute_instance(0, gi.id, ci_id(A100, "3g.20gb", "1c.3g.20gb"))
    assert code_of(e) == "INSUFFICIENT_RESOURCES"
    b.destroy_compute_instance(0, gi.id, full.id)
    small = [b.create_compute_instance(0, gi.id, ci_id(A100, "3g.20gb", "1c.3g.20gb")) for _ in range(3)]
    assert [(c.id, c.start) for c in small] == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(BackendError) as e:
        b.destroy_compute_instance(0, gi.id, 9)
    assert code_of(e) == "NOT_FOUND"


def test_ci_uuids_stable_until_destroyed(state):
    b = enabled(state)
    gi = b.create_gpu_instance(0, P7G, 0)
    ci = b.create_compute_instance(0, gi.id, ci_id(A100, "7g.40gb", "7g.40gb"))
    assert ci.uuid.startswith("MIG-")
    again = sim.SimBackend(state).gpu_instances(0)[0].compute_instances[0]
    assert again.uuid == ci.uuid
    b.destroy_compute_instance(0, gi.id, ci.id)
    ci2 = b.create_compute_instance(0, gi.id, ci_id(A100, "7g.40gb", "7g.40gb"))
    assert ci2.uuid != ci.uuid


def test_operation_counters(state):
    b = enabled(state)  # 2 set_mode, 2 resets (one per GPU)
    gi = b.create_gpu_instance(0, P7G, 0)
    ci = b.create_compute_instance(0, gi.id, ci_id(A100, "7g.40gb", "7g.40gb"))
    with pytest.raises(BackendError):
        b.create_gpu_instance(0, P7G, 0)  # refused calls do not count
    b.destroy_compute_instance(0, gi.id, ci.id)
    b.destroy_gpu_instance(0, gi.id)
    assert b.snapshot().ops == {"create_gi": 1, "destroy_gi": 1, "create_ci": 1, "destroy_ci": 1, "set_mode": 2, "reset": 2}


# --- faults and latency ----------------------------------------------------------


def test_fault_nth_call_fails_and_changes_nothing(state, monkeypatch):
    b = enabled(state)
    monkeypatch.setenv("MIGMANAGERD_SIM_FAULTS", "create_gi:2")
    b.create_gpu_instance(0, P1G, 0)
    before = state.read_bytes()
    with pytest.raises(BackendError) as e:
        b.create_gpu_instance(1, P1G, 0)
    assert code_of(e) == "SIM_FAULT_INJECTED" and e.value.gpu_index == 1
    assert state.read_bytes() == before
    b.create_gpu_instance(1, P1G, 0)  # the 3rd call works
    assert len(b.gpu_instances(1)) == 1


def test_fault_per_gpu_and_every_call(state, monkeypatch):
    b = enabled(state, "3xA100-SXM4-40GB")
    monkeypatch.setenv("MIGMANAGERD_SIM_FAULTS", "create_gi@2:1, reset:*")
    b.create_gpu_instance(0, P1G, 0)
    b.create_gpu_instance(1, P1G, 0)
    with pytest.raises(BackendError) as e:
        b.create_gpu_instance(2, P1G, 0)
    assert (e.value.gpu_index, code_of(e)) == (2, "SIM_FAULT_INJECTED")
    b.create_gpu_instance(2, P1G, 0)
    for _ in range(2):
        with pytest.raises(BackendError) as e:
            b.reset([0])
        assert code_of(e) == "SIM_FAULT_INJECTED"
    assert len(b.gpu_instances(0)) == 1


def test_fault_on_first_mode_change(state, monkeypatch):
    b = make(state, "1xH100-80GB")
    monkeypatch.setenv("MIGMANAGERD_SIM_FAULTS", "set_mode:1")
    with pytest.raises(BackendError) as e:
        b.set_mig_mode(0, True)
    assert (e.value.gpu_index, code_of(e)) == (0, "SIM_FAULT_INJECTED")
    assert b.mig_mode(0) == sim.MigMode(False, False) and b.snapshot().ops["set_mode"] == 0
    b.set_mig_mode(0, True)
    assert b.mig_mode(0).current


@pytest.mark.parametrize("text", ["create_gi", "explode:1", "create_gi:0", "reset@x:1"])
def test_bad_fault_rule_is_a_usage_error(text):
    with pytest.raises(UsageError):
        parse_faults(text)


def test_latency_parse():
    assert parse_latency("create_gi=0.2, reset=2") == {"create_gi": 0.2, "reset": 2.0}
    for bad in ("create_gi", "nope=1", "reset=-1", "reset=x"):
        with pytest.raises(UsageError):
            parse_latency(bad)


def test_latency_sleeps_outside_the_node_lock(state, monkeypatch):
    sim.init_node(state, "2xA100-SXM4-40GB", latency={"create_gi": 0.5, "set_mode": 0.25})
    seen = []

    def fake_sleep(seconds):
        # Both locks must be free while "the GPU works": another thread and
        # another process could change the node meanwhile.
        tlock = sim_state._thread_lock(state)
        assert tlock.acquire(blocking=False)
        tlock.release()
        fd = os.open(sim_state.lock_path(state), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if held
        finally:
            os.close(fd)
        seen.append(seconds)

    b = sim.SimBackend(state, sleep=fake_sleep)
    b.set_mig_mode(0, True)
    b.reset([0])
    b.create_gpu_instance(0, P1G, 0)
    monkeypatch.setenv("MIGMANAGERD_SIM_LATENCY", "create_gi=0.1")
    b.create_gpu_instance(0, P1G, 1)
    assert seen == [0.25, 0.5, 0.1]


def test_threads_on_different_gpus_overlap_during_latency(state):
    sim.init_node(state, "4xH100-80GB", latency={"set_mode": 1.0})
    barrier = threading.Barrier(4, timeout=10)

    def sleep(_seconds):
        barrier.wait()  # only passes if all four threads sleep at the same time

    b = sim.SimBackend(state, sleep=sleep)
    errors = []

    def worker(i):
        try:
            b.set_mig_mode(i, True)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(b.mig_mode(i).current for i in range(4))
    assert b.snapshot().ops["set_mode"] == 4


def test_threads_do_not_lose_updates(state):
    b = enabled(state, "8xA100-SXM4-40GB")

    def worker(i):
        for s in range(7):
            gi = b.create_gpu_instance(i, P1G, s)
            b.create_compute_instance(i, gi.id, ci_id(A100, "1g.5gb", "1g.5gb"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(b.gpu_instances(i)) == 7 for i in range(8))
    assert b.snapshot().ops["create_gi"] == 56 and b.snapshot().ops["create_ci"] == 56


_CHILD = """
import sys
from migmanagerd.gpu.sim import SimBackend
b = SimBackend(sys.argv[1])
i = int(sys.argv[2])
for s in range(7):
    b.create_gpu_instance(i, {p1g}, s)
"""


def test_processes_share_the_state_without_lost_updates(state):
    enabled(state, "4xA100-SXM4-40GB")
    code = _CHILD.format(p1g=P1G)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(state), str(i)]) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    b = sim.SimBackend(state)
    assert [len(b.gpu_instances(i)) for i in range(4)] == [7, 7, 7, 7]
    assert b.snapshot().ops["create_gi"] == 28
    assert not list(state.parent.glob(".*.tmp"))  # atomic saves leave no debris


def test_describe_json_shape(state):
    b = enabled(state, "1xA100-SXM4-40GB")
    gi = b.create_gpu_instance(0, P3G, 4)
    ci = b.create_compute_instance(0, gi.id, ci_id(A100, "3g.20gb", "1c.3g.20gb"))
    view = json.loads(json.dumps(sim.describe(b.snapshot())))
    g = view["gpus"][0]
    assert set(g) >= {"index", "uuid", "model", "device_id", "mig_enabled", "mig_pending", "instances"}
    assert g["device_id"] == "0x20B010DE"
    assert g["instances"] == [{"profile": "1c.3g.20gb", "start": 4, "size": 4, "uuid": ci.uuid, "gi_id": gi.id, "ci_id": ci.id}]
    assert view["ops"]["create_ci"] == 1
