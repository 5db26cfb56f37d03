"""The NVML backend against a strict fake of pynvml (tests/fake_pynvml.py)."""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import sys
from pathlib import Path

import pynvml as real
import pytest
from fake_pynvml import FakeNvml, install

from migmanagerd.catalog.load import load_catalog
from migmanagerd.errors import UsageError
from migmanagerd.gpu.backend import BackendError, MigMode
from migmanagerd.gpu.factory import open_backend
from migmanagerd.gpu.nvml import NvmlBackend, pci_sysfs_name

CATALOG = load_catalog()
A100 = CATALOG.find("A100-SXM4-40GB")
H100 = CATALOG.find("H100-80GB")


def gi(model, name):
    return model.gi_profile(name).nvml_id


def ci(model, gi_name, ci_name):
    return model.gi_profile(gi_name).ci_profile(ci_name).nvml_id


@pytest.fixture
def fake(mocker):
    return install(mocker, FakeNvml([A100, A100, None, H100]))


@pytest.fixture
def backend(fake):
    b = NvmlBackend()
    yield b
    b.close()


def enable(fake, b, index):
    b.set_mig_mode(index, True)
    fake.reset_gpu(index)


def calls_after(fake, mark):
    return fake.names()[mark:]


# --- loading, init and shutdown --------------------------------------------------


def test_module_imports_without_nvml():
    code = (
        "import sys; sys.modules['pynvml'] = None\n"
        "import migmanagerd.gpu.nvml, migmanagerd.gpu.factory\n"
        "from migmanagerd.gpu.nvml import NvmlBackend\n"
        "from migmanagerd.gpu.backend import BackendError\n"
        "try:\n    NvmlBackend()\nexcept BackendError as e:\n    print(e.code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "LIBRARY_NOT_FOUND"


def test_init_once_and_shutdown_once(fake):
    a, b = NvmlBackend(), NvmlBackend()
    a.gpus()
    b.mig_mode(0)
    assert fake.init_count == 1
    a.close()
    a.close()
    assert fake.shutdown_count == 0
    b.close()
    assert (fake.init_count, fake.shutdown_count) == (1, 1)
    with pytest.raises(BackendError) as e:
        b.mig_mode(0)
    assert e.value.code == "UNINITIALIZED"


def test_init_failure_is_a_backend_error_and_retried_later(fake):
    fake.fail("nvmlInit", real.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(BackendError) as e:
        NvmlBackend()
    assert (e.value.gpu_index, e.value.code) == (None, "DRIVER_NOT_LOADED")
    b = NvmlBackend()  # not counted as open: this one initialises
    assert fake.init_count == 1
    b.close()
    assert fake.shutdown_count == 1


# --- discovery -------------------------------------------------------------------


def test_gpus_describe_the_node(backend, fake):
    gpus = backend.gpus()
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert [g.name for g in gpus] == [A100.product_names[0], A100.product_names[0], "NVIDIA DGX Display", H100.product_names[0]]
    assert gpus[0].pci_device_id == 0x20B010DE and gpus[2].pci_device_id == 0x1FB010DE
    assert gpus[1].pci_bus_id == "00000000:0F:00.0"
    assert gpus[0].memory_mib == A100.memory_mib
    assert [g.mig_capable for g in gpus] == [True, True, False, True]
    assert gpus[0].uuid == fake.gpus[0].uuid


def test_profile_ids_learned_from_selectors(backend, fake):
    profiles = backend.gi_profiles(0)
    assert {p.id: p.selector for p in profiles.values()} == {p.nvml_id: p.selector for p in A100.gi_profiles}
    assert profiles[gi(A100, "3g.20gb")].slice_count == 3
    asked = [args[1] for name, args in fake.calls if name == "nvmlDeviceGetGpuInstanceProfileInfo"]
    assert asked == list(range(real.NVML_GPU_INSTANCE_PROFILE_COUNT))
    backend.gi_profiles(0)  # cached: no more queries
    assert fake.names().count("nvmlDeviceGetGpuInstanceProfileInfo") == real.NVML_GPU_INSTANCE_PROFILE_COUNT


def test_profile_info_falls_back_to_v1_call(backend, fake):
    fake.fail("nvmlDeviceGetGpuInstanceProfileInfo", real.NVML_ERROR_FUNCTION_NOT_FOUND)
    profiles = backend.gi_profiles(0)
    assert gi(A100, "1g.5gb") in profiles
    versions = [args[2] for name, args in fake.calls if name == "nvmlDeviceGetGpuInstanceProfileInfo"][:2]
    assert versions == [2, 1]


# --- MIG mode ----------------------------------------------------------------------


def test_mig_mode_pending_until_reset(backend, fake):
    backend.set_mig_mode(0, True)
    assert backend.mig_mode(0) == MigMode(current=False, pending=True)
    fake.reset_gpu(0)
    assert backend.mig_mode(0) == MigMode(True, True)
    backend.set_mig_mode(3, True)  # Hopper: at once
    assert backend.mig_mode(3) == MigMode(True, True)


def test_gpu_without_mig(backend):
    assert backend.mig_mode(2) == MigMode(False, False)
    assert backend.gpu_instances(2) == ()
    with pytest.raises(BackendError) as e:
        backend.set_mig_mode(2, True)
    assert (e.value.gpu_index, e.value.code) == (2, "NOT_SUPPORTED")
    assert "enable MIG mode" in str(e.value)


def test_activation_in_use_is_an_error_reset_required_is_pending(backend, fake):
    fake.gpus[3].compute_procs.append((4242, None))
    with pytest.raises(BackendError) as e:
        backend.set_mig_mode(3, True)
    assert (e.value.gpu_index, e.value.code) == (3, "IN_USE")
    assert backend.mig_mode(3) == MigMode(False, True)
    fake.activation_status = real.NVML_ERROR_RESET_REQUIRED
    backend.set_mig_mode(1, True)
    assert backend.mig_mode(1) == MigMode(False, True)


# --- GPU and compute instances -----------------------------------------------------------


def test_create_uses_queried_placement_then_creates_ci(backend, fake):
    enable(fake, backend, 0)
    mark = len(fake.calls)
    g = backend.create_gpu_instance(0, gi(A100, "3g.20gb"), 4)
    names = [n for n in calls_after(fake, mark) if n != "nvmlDeviceGetHandleByIndex"]
    assert names == [
        "nvmlDeviceGetGpuInstancePossiblePlacements",
        "nvmlDeviceGetGpuInstancePossiblePlacements",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceGetInfo",
    ]
    placement = next(a for n, a in fake.calls if n == "nvmlDeviceCreateGpuInstanceWithPlacement")[2]._obj
    assert (placement.start, placement.size) == (4, 4)
    assert (g.profile_id, g.start, g.size) == (gi(A100, "3g.20gb"), 4, 4)
    mark = len(fake.calls)
    c = backend.create_compute_instance(0, g.id, ci(A100, "3g.20gb", "1c.3g.20gb"))
    names = [n for n in calls_after(fake, mark) if n != "nvmlDeviceGetHandleByIndex"]
    assert names[:4] == [
        "nvmlDeviceGetGpuInstanceById",
        "nvmlGpuInstanceGetComputeInstanceProfileInfo",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlComputeInstanceGetInfo",
    ]
    assert c.uuid == fake.gpus[0].gis[g.id].cis[c.id].uuid and c.uuid.startswith("MIG-")
    assert (c.profile_id, c.size) == (ci(A100, "3g.20gb", "1c.3g.20gb"), 1)


def test_illegal_start_refused_before_any_create(backend, fake):
    enable(fake, backend, 0)
    with pytest.raises(BackendError) as e:
        backend.create_gpu_instance(0, gi(A100, "3g.20gb"), 2)
    assert (e.value.gpu_index, e.value.code) == (0, "INVALID_ARGUMENT")
    assert "[0, 4]" in str(e.value)
    assert "nvmlDeviceCreateGpuInstanceWithPlacement" not in fake.names()


def test_nvml_refusals_become_backend_errors(backend, fake):
    with pytest.raises(BackendError) as e:
        backend.create_gpu_instance(0, gi(A100, "7g.40gb"), 0)  # MIG off
    assert (e.value.gpu_index, e.value.code) == (0, "NOT_SUPPORTED")
    assert "create GPU instance" in e.value.action
    enable(fake, backend, 0)
    backend.create_gpu_instance(0, gi(A100, "4g.20gb"), 0)
    with pytest.raises(BackendError) as e:
        backend.create_gpu_instance(0, gi(A100, "3g.20gb"), 0)  # overlaps the 4g
    assert e.value.code == "INSUFFICIENT_RESOURCES"
    with pytest.raises(BackendError) as e:
        backend.create_gpu_instance(0, 99, 0)
    assert e.value.code == "INVALID_ARGUMENT"


def test_ci_profile_not_in_gi_is_invalid_argument(backend, fake):
    enable(fake, backend, 0)
    g = backend.create_gpu_instance(0, gi(A100, "1g.5gb"), 3)
    with pytest.raises(BackendError) as e:
        backend.create_compute_instance(0, g.id, ci(A100, "7g.40gb", "7g.40gb"))  # enum 4: not in a 1g
    assert (e.value.gpu_index, e.value.code) == (0, "INVALID_ARGUMENT")
    assert "nvmlGpuInstanceCreateComputeInstance" not in fake.names()


def test_destroy_errors_and_success(backend, fake):
    enable(fake, backend, 0)
    g = backend.create_gpu_instance(0, gi(A100, "7g.40gb"), 0)
    c = backend.create_compute_instance(0, g.id, ci(A100, "7g.40gb", "7g.40gb"))
    with pytest.raises(BackendError) as e:
        backend.destroy_gpu_instance(0, g.id)
    assert (e.value.gpu_index, e.value.code) == (0, "IN_USE")
    assert f"destroy GPU instance {g.id}" in str(e.value)
    with pytest.raises(BackendError) as e:
        backend.destroy_compute_instance(0, g.id, 5)
    assert e.value.code == "NOT_FOUND"
    backend.destroy_compute_instance(0, g.id, c.id)
    backend.destroy_gpu_instance(0, g.id)
    assert backend.gpu_instances(0) == ()
    with pytest.raises(BackendError) as e:
        backend.destroy_gpu_instance(0, g.id)
    assert e.value.code == "NOT_FOUND"


def test_gpu_instances_round_trip(backend, fake):
    enable(fake, backend, 1)
    g3 = backend.create_gpu_instance(1, gi(A100, "3g.20gb"), 4)
    c2 = backend.create_compute_instance(1, g3.id, ci(A100, "3g.20gb", "2c.3g.20gb"))
    c1 = backend.create_compute_instance(1, g3.id, ci(A100, "3g.20gb", "1c.3g.20gb"))
    g1 = backend.create_gpu_instance(1, gi(A100, "1g.5gb"), 0)
    listed = backend.gpu_instances(1)
    assert [(x.profile_id, x.start, x.size) for x in listed] == [(gi(A100, "1g.5gb"), 0, 1), (gi(A100, "3g.20gb"), 4, 4)]
    assert listed[0].id == g1.id and listed[0].compute_instances == ()
    cis = listed[1].compute_instances
    assert [(x.id, x.profile_id, x.start, x.size, x.uuid) for x in cis] == [
        (c2.id, c2.profile_id, 0, 2, c2.uuid),
        (c1.id, c1.profile_id, 2, 1, c1.uuid),
    ]
    assert len({c1.uuid, c2.uuid}) == 2


def test_processes_merged_in_mib(backend, fake):
    fake.gpus[0].compute_procs += [(100, 512 * 1024 * 1024), (200, None)]
    fake.gpus[0].graphics_procs += [(100, 512 * 1024 * 1024), (300, 0)]
    procs = backend.processes(0)
    assert [(p.pid, p.used_memory_mib, p.gpu_index) for p in procs] == [(100, 512, 0), (200, None, 0), (300, 0, 0)]
    assert backend.processes(1) == ()


@pytest.mark.parametrize(
    "call, nvml_fn, value, code",
    [
        (lambda b: b.gpus(), "nvmlDeviceGetName", real.NVML_ERROR_GPU_IS_LOST, "GPU_IS_LOST"),
        (lambda b: b.mig_mode(1), "nvmlDeviceGetMigMode", real.NVML_ERROR_UNKNOWN, "UNKNOWN"),
        (lambda b: b.set_mig_mode(1, True), "nvmlDeviceSetMigMode", real.NVML_ERROR_NO_PERMISSION, "NO_PERMISSION"),
        (lambda b: b.processes(1), "nvmlDeviceGetComputeRunningProcesses", real.NVML_ERROR_NO_PERMISSION, "NO_PERMISSION"),
        (lambda b: b.gpu_instances(1), "nvmlDeviceGetGpuInstances", real.NVML_ERROR_UNKNOWN, "UNKNOWN"),
        (lambda b: b.create_gpu_instance(1, 19, 0), "nvmlDeviceCreateGpuInstanceWithPlacement", real.NVML_ERROR_INSUFFICIENT_RESOURCES, "INSUFFICIENT_RESOURCES"),
        (lambda b: b.create_compute_instance(1, 1, 0), "nvmlGpuInstanceCreateComputeInstance", real.NVML_ERROR_INSUFFICIENT_RESOURCES, "INSUFFICIENT_RESOURCES"),
        (lambda b: b.destroy_compute_instance(1, 1, 0), "nvmlComputeInstanceDestroy", real.NVML_ERROR_IN_USE, "IN_USE"),
        (lambda b: b.destroy_gpu_instance(1, 1), "nvmlGpuInstanceDestroy", real.NVML_ERROR_IN_USE, "IN_USE"),
        (lambda b: b.gpus(), "nvmlDeviceGetHandleByIndex", real.NVML_ERROR_GPU_IS_LOST, "GPU_IS_LOST"),
    ],
)
def test_every_nvml_error_names_gpu_action_and_code(backend, fake, call, nvml_fn, value, code):
    enable(fake, backend, 1)
    if "ComputeInstance" in nvml_fn or nvml_fn == "nvmlGpuInstanceDestroy":
        g = backend.create_gpu_instance(1, gi(A100, "1g.5gb"), 0)
        assert g.id == 1  # the fake hands out the lowest free id; the calls above use it
        if nvml_fn in ("nvmlComputeInstanceDestroy",):
            backend.create_compute_instance(1, g.id, 0)
    if nvml_fn == "nvmlDeviceGetGpuInstances":
        backend.create_gpu_instance(1, gi(A100, "1g.5gb"), 0)
    fake.fail(nvml_fn, value)
    with pytest.raises(BackendError) as e:
        call(backend)
    expected_gpu = 0 if nvml_fn in ("nvmlDeviceGetName", "nvmlDeviceGetHandleByIndex") else 1
    assert (e.value.gpu_index, e.value.code) == (expected_gpu, code)
    assert str(e.value).startswith(f"GPU {expected_gpu}: ") and code in str(e.value)


# --- reset -----------------------------------------------------------------------


def fake_smi(tmp_path: Path, monkeypatch, body: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "nvidia-smi"
    log = tmp_path / "smi.log"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_reset_runs_nvidia_smi_per_gpu(backend, tmp_path, monkeypatch):
    log = fake_smi(tmp_path, monkeypatch, "echo 'GPU reset successfully'; exit 0")
    backend.reset([1, 0, 1])
    assert log.read_text().splitlines() == ["-r -i 1", "-r -i 0"]


def test_reset_failure_carries_the_output(backend, tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, "echo 'Unable to reset GPU 00000000:07:00.0: In use by another client' >&2; exit 255")
    with pytest.raises(BackendError) as e:
        backend.reset([0])
    assert (e.value.gpu_index, e.value.code) == (0, "IN_USE")
    assert "In use by another client" in str(e.value)


def test_reset_other_failure(backend, tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, "echo 'GPU is lost'; exit 15")
    with pytest.raises(BackendError) as e:
        backend.reset([3])
    assert (e.value.gpu_index, e.value.code) == (3, "RESET_FAILED")
    assert "exited 15" in str(e.value)


def test_reset_timeout_is_bounded(fake, tmp_path, monkeypatch):
    fake_smi(tmp_path, monkeypatch, "exec sleep 30")
    b = NvmlBackend(reset_timeout_s=0.2)
    try:
        with pytest.raises(BackendError) as e:
            b.reset([0])
        assert e.value.code == "TIMEOUT"
    finally:
        b.close()


def test_reset_without_nvidia_smi(fake):
    b = NvmlBackend(nvidia_smi="/nonexistent/nvidia-smi")
    try:
        with pytest.raises(BackendError) as e:
            b.reset([0])
        assert e.value.code == "NOT_FOUND"
    finally:
        b.close()


def test_reset_available_from_sysfs(fake, tmp_path):
    dev = tmp_path / "bus" / "pci" / "devices" / "0000:07:00.0"
    dev.mkdir(parents=True)
    (dev / "reset").write_text("")
    (tmp_path / "bus" / "pci" / "devices" / "0000:0f:00.0").mkdir()  # no reset file: passthrough
    b = NvmlBackend(sysfs_root=tmp_path)
    try:
        assert b.reset_available(0) is True
        assert b.reset_available(1) is False
    finally:
        b.close()


def test_pci_sysfs_name():
    assert pci_sysfs_name("00000000:0F:00.0") == "0000:0f:00.0"
    assert pci_sysfs_name("00000001:B7:00.0") == "0001:b7:00.0"


# --- the fake itself is strict -----------------------------------------------------------


def test_fake_rejects_forged_handles_and_calls_before_init(fake):
    with pytest.raises(real.NVMLError) as e:
        fake.nvmlDeviceGetCount()
    assert e.value.value == real.NVML_ERROR_UNINITIALIZED
    fake.nvmlInit()
    forged = ctypes.cast(ctypes.pointer(ctypes.c_uint64(1)), real.c_nvmlDevice_t)
    with pytest.raises(real.NVMLError) as e:
        fake.nvmlDeviceGetName(forged)
    assert e.value.value == real.NVML_ERROR_INVALID_ARGUMENT
    with pytest.raises(AttributeError):
        fake.nvmlDeviceCreateGpuInstance  # driver-chosen placement does not exist here
    fake.nvmlShutdown()


# --- factory -------------------------------------------------------------------------


def test_factory_picks_backend(fake, monkeypatch, tmp_path):
    monkeypatch.delenv("MIGMANAGERD_BACKEND", raising=False)
    b = open_backend()
    assert b.name == "nvml"
    b.close()
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(tmp_path / "s.json"))
    monkeypatch.setenv("MIGMANAGERD_SIM_NODE", "1xA30-24GB")
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "sim")
    assert open_backend().name == "sim"
    nb = open_backend("nvml")
    assert nb.name == "nvml"
    nb.close()
    with pytest.raises(UsageError, match="bogus"):
        open_backend("bogus")
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "gpu")
    with pytest.raises(UsageError, match="MIGMANAGERD_BACKEND"):
        open_backend()


# --- scripts/nvml_readonly_discovery.py ---------------------------------------------------


def _discovery_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "nvml_readonly_discovery.py"
    spec = importlib.util.spec_from_file_location("nvml_readonly_discovery", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_discovery_script_is_read_only_and_matches_catalog(fake, tmp_path):
    script = _discovery_script()
    b = NvmlBackend()
    enable(fake, b, 0)
    g = b.create_gpu_instance(0, gi(A100, "3g.20gb"), 0)
    b.create_compute_instance(0, g.id, ci(A100, "3g.20gb", "3g.20gb"))
    b.close()
    mark = len(fake.calls)
    report = script.discover(fake, catalog=CATALOG, sysfs_root=str(tmp_path))
    called = calls_after(fake, mark)
    assert not [n for n in called if any(w in n for w in ("Set", "Create", "Destroy"))]
    assert called[0] == "nvmlInit" and called[-1] == "nvmlShutdown"
    gpus = report["gpus"]
    assert [x["catalog_model"] for x in gpus] == ["A100-SXM4-40GB", "A100-SXM4-40GB", None, "H100-80GB"]
    assert [x["catalog_diff"] for x in gpus] == [[], [], [], []]
    assert gpus[2]["mig_mode"] is None
    assert gpus[0]["instances"][0]["placement"] == [0, 4]
    assert gpus[0]["instances"][0]["compute_instances"][0]["placement"] == [0, 3]
    p3g = next(p for p in gpus[0]["profiles"] if p.get("id") == gi(A100, "3g.20gb"))
    assert p3g["placements"] == [[0, 4], [4, 4]]


def test_discovery_reports_catalog_differences(fake):
    script = _discovery_script()
    report = script.discover(fake, catalog=None)
    h100_as_seen = report["gpus"][3]
    diffs = script.compare_with_catalog(h100_as_seen, CATALOG.find("A30-24GB"))  # wrong model on purpose
    assert diffs  # the comparison notices
    with pytest.raises(PermissionError):
        script.ReadOnlyNvml(fake).nvmlDeviceSetMigMode


def test_threads_one_per_gpu(mocker):
    import threading

    fake = install(mocker, FakeNvml([A100] * 4))
    b = NvmlBackend()
    try:
        for i in range(4):
            enable(fake, b, i)
        errors = []

        def worker(i):
            try:
                for s in range(7):
                    g = b.create_gpu_instance(i, gi(A100, "1g.5gb"), s)
                    b.create_compute_instance(i, g.id, ci(A100, "1g.5gb", "1g.5gb"))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for i in range(4):
            listed = b.gpu_instances(i)
            assert [x.start for x in listed] == list(range(7))
            assert all(len(x.compute_instances) == 1 and x.compute_instances[0].uuid for x in listed)
    finally:
        b.close()
