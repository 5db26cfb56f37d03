"""The NVML backend through the real nvidia-ml-py and the NVML stand-in
(migmanagerd/gpu/nvml_standin), served by a simulated node.

pynvml's own ctypes layer runs unchanged: symbol lookup, struct versions,
buffers and counts passed by pointer. Errors a simulated node cannot produce
(GPU_IS_LOST, NO_PERMISSION) are injected at the C boundary with
``StandinLibrary.fail``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from apply_helpers import NvmlOverSim, catalog, close_backends

from migmanagerd.errors import UsageError
from migmanagerd.gpu import nvml_standin
from migmanagerd.gpu.backend import BackendError, MigMode
from migmanagerd.gpu.factory import open_backend
from migmanagerd.gpu.nvml import NvmlBackend, pci_sysfs_name
from migmanagerd.gpu.nvml_standin import structs as S
from migmanagerd.gpu.sim import init_node

CATALOG = catalog()
A100 = CATALOG.find("A100-SXM4-40GB")
H100 = CATALOG.find("H100-80GB")
RTX = CATALOG.find("RTX-PRO-6000")
NODE = "2xA100-SXM4-40GB,1x0x1FB010DE,1xH100-80GB"  # GPU 2: no MIG (a display GPU)
REPO = Path(__file__).resolve().parents[1]


def gi(model, name):
    return model.gi_profile(name).nvml_id


def ci(model, gi_name, ci_name):
    return model.gi_profile(gi_name).ci_profile(ci_name).nvml_id


def make(tmp_path: Path, spec: str = NODE, *, name: str = "node.json", no_reset: bool = False, **standin) -> NvmlOverSim:
    path = tmp_path / name
    init_node(path, spec, catalog=CATALOG, no_reset=no_reset)
    return NvmlOverSim(path, **standin)


@pytest.fixture
def backend(tmp_path):
    b = make(tmp_path)
    yield b
    close_backends()


@pytest.fixture(autouse=True)
def _close_all():
    yield
    close_backends()


def enable(b: NvmlOverSim, index: int) -> None:
    b.set_mig_mode(index, True)
    b.sim.reset([index])  # the simulator's own reset: quick, no nvidia-smi


def called(b: NvmlOverSim, mark: int = 0) -> list[str]:
    return b.lib.calls[mark:]


def codes(b: NvmlOverSim):
    return b._nv  # the private pynvml copy: its NVML_ERROR_* constants


# --- loading, init and shutdown --------------------------------------------------


def test_module_imports_without_nvml():
    code = (
        "import sys; sys.modules['pynvml'] = None\n"
        "import migmanagerd.gpu.nvml, migmanagerd.gpu.factory\n"
        "from migmanagerd.gpu.nvml import NvmlBackend\n"
        "from migmanagerd.gpu.backend import BackendError\n"
        "try:\n    NvmlBackend()\nexcept BackendError as e:\n    print(e.code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "LIBRARY_NOT_FOUND"


def test_init_once_and_shutdown_once(backend):
    other = NvmlBackend(nvml=backend._nv)
    other.mig_mode(0)
    assert backend.lib.calls.count("nvmlInitWithFlags") == 1 and backend.lib.sessions == 1
    other.close()
    other.close()
    assert backend.lib.calls.count("nvmlShutdown") == 0
    backend.close()
    assert backend.lib.calls.count("nvmlShutdown") == 1 and backend.lib.sessions == 0
    with pytest.raises(BackendError) as e:
        backend.mig_mode(0)
    assert e.value.code == "UNINITIALIZED"


def test_init_failure_is_a_backend_error_and_retried_later(backend):
    backend.close()
    backend.lib.fail("nvmlInitWithFlags", codes(backend).NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(BackendError) as e:
        NvmlBackend(nvml=backend._nv)
    assert (e.value.gpu_index, e.value.code) == (None, "DRIVER_NOT_LOADED")
    b = NvmlBackend(nvml=backend._nv)
    assert backend.lib.sessions == 1
    b.close()
    assert backend.lib.sessions == 0


# --- discovery -------------------------------------------------------------------


def test_gpus_describe_the_node(backend):
    gpus = backend.gpus()
    node = backend.snapshot()
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert [g.name for g in gpus] == [A100.product_names[0], A100.product_names[0], "NVIDIA GPU 1FB0", H100.product_names[0]]
    assert gpus[0].pci_device_id == 0x20B010DE and gpus[2].pci_device_id == 0x1FB010DE
    assert gpus[1].pci_bus_id == "00000000:0F:00.0"
    assert gpus[0].memory_mib == A100.memory_mib
    assert [g.mig_capable for g in gpus] == [True, True, False, True]
    assert [g.uuid for g in gpus] == [g.uuid for g in node.gpus]


def test_profile_ids_learned_from_selectors_until_invalid_argument(backend):
    enable(backend, 0)
    profiles = backend.gi_profiles(0)
    assert {p.id: p.selector for p in profiles.values()} == {p.nvml_id: p.selector for p in A100.gi_profiles}
    assert profiles[gi(A100, "3g.20gb")].slice_count == 3
    asked = called(backend).count("nvmlDeviceGetGpuInstanceProfileInfoV")
    assert asked == 0x12 + 1  # every selector the driver has, then the INVALID_ARGUMENT that ends it
    backend.gi_profiles(0)  # cached: no more queries
    assert called(backend).count("nvmlDeviceGetGpuInstanceProfileInfoV") == asked


def test_old_bindings_count_still_lists_newer_profiles(tmp_path):
    """nvidia-ml-py 12.535/12.560 have NVML_GPU_INSTANCE_PROFILE_COUNT = 0xA:
    the RTX PRO 6000's +gfx/-me/+me.all profiles (selectors 10-16) must be
    listed anyway, and their instances seen."""
    b = make(tmp_path, "1xRTX-PRO-6000")
    b._nv.NVML_GPU_INSTANCE_PROFILE_COUNT = 0xA
    enable(b, 0)
    profiles = b.gi_profiles(0)
    assert {p.selector for p in profiles.values()} == {p.selector for p in RTX.gi_profiles}
    assert max(p.selector for p in profiles.values()) > 9
    gfx = next(p for p in RTX.gi_profiles if p.selector == 11)  # NVML_GPU_INSTANCE_PROFILE_2_SLICE_GFX
    made = b.create_gpu_instance(0, gfx.nvml_id, gfx.placements[-1])
    assert [(x.id, x.profile_id) for x in b.gpu_instances(0)] == [(made.id, gfx.nvml_id)]


def test_profile_info_falls_back_to_v1_call(tmp_path):
    b = make(tmp_path, missing=("nvmlDeviceGetGpuInstanceProfileInfoV",))
    enable(b, 0)
    profiles = b.gi_profiles(0)
    assert {p.id for p in profiles.values()} == {p.nvml_id for p in A100.gi_profiles}
    assert "nvmlDeviceGetGpuInstanceProfileInfo" in called(b)


def test_profiles_with_mig_off_are_not_supported_and_not_cached(backend):
    assert backend.gi_profiles(0) == {}
    assert backend.gpu_instances(0) == ()
    enable(backend, 0)
    assert len(backend.gi_profiles(0)) == len(A100.gi_profiles)


# --- MIG mode ----------------------------------------------------------------------


def test_mig_mode_pending_until_reset(backend):
    backend.set_mig_mode(0, True)
    assert backend.mig_mode(0) == MigMode(current=False, pending=True)
    backend.reset([0])
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


@pytest.mark.parametrize("cause, status", [("busy", "IN_USE"), ("no_reset", "NOT_SUPPORTED")])
def test_activation_status_is_logged_and_the_change_left_pending(tmp_path, caplog, cause, status):
    """NVIDIA's MIG guide: a busy GPU answers IN_USE, a passthrough VM
    NOT_SUPPORTED, both with the change pending. Not an error of the call:
    the engine decides reset or reboot from mig_mode()."""
    b = make(tmp_path, no_reset=cause == "no_reset", busy_gpus=(0,) if cause == "busy" else ())
    with caplog.at_level(logging.INFO, logger="migmanagerd"):
        b.set_mig_mode(0, True)
    assert b.mig_mode(0) == MigMode(current=False, pending=True)
    assert f"activation status {status}" in caplog.text
    assert b.reset_available(0) is (cause != "no_reset")


# --- GPU and compute instances -----------------------------------------------------------


def test_create_uses_queried_placement_then_creates_ci(backend):
    enable(backend, 0)
    backend.gi_profiles(0)
    mark = len(backend.lib.calls)
    g = backend.create_gpu_instance(0, gi(A100, "3g.20gb"), 4)
    names = [n for n in called(backend, mark) if n != "nvmlDeviceGetHandleByIndex_v2"]
    assert names == [
        "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
        "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceGetInfo",
    ]
    assert (g.profile_id, g.start, g.size) == (gi(A100, "3g.20gb"), 4, 4)
    mark = len(backend.lib.calls)
    c = backend.create_compute_instance(0, g.id, ci(A100, "3g.20gb", "1c.3g.20gb"))
    names = [n for n in called(backend, mark) if n != "nvmlDeviceGetHandleByIndex_v2"]
    assert names[:4] == [
        "nvmlDeviceGetGpuInstanceById",
        "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlComputeInstanceGetInfo_v2",
    ]
    sim_gi = next(x for x in backend.snapshot().gpus[0].instances if x.id == g.id)
    assert c.uuid == sim_gi.cis[0].uuid and c.uuid.startswith("MIG-")
    assert (c.profile_id, c.size) == (ci(A100, "3g.20gb", "1c.3g.20gb"), 1)


def test_illegal_start_refused_before_any_create(backend):
    enable(backend, 0)
    with pytest.raises(BackendError) as e:
        backend.create_gpu_instance(0, gi(A100, "3g.20gb"), 2)
    assert (e.value.gpu_index, e.value.code) == (0, "INVALID_ARGUMENT")
    assert "[0, 4]" in str(e.value)
    assert "nvmlDeviceCreateGpuInstanceWithPlacement" not in called(backend)


def test_nvml_refusals_become_backend_errors(backend):
    with pytest.raises(BackendError) as e:
        backend.create_gpu_instance(0, gi(A100, "7g.40gb"), 0)  # MIG off
    assert (e.value.gpu_index, e.value.code) == (0, "NOT_SUPPORTED")
    assert "GI profile 0" in e.value.action  # its placements: NOT_SUPPORTED while MIG is off
    enable(backend, 0)
    backend.create_gpu_instance(0, gi(A100, "4g.20gb"), 0)
    with pytest.raises(BackendError) as e:
        backend.create_gpu_instance(0, gi(A100, "3g.20gb"), 0)  # overlaps the 4g
    assert e.value.code == "INSUFFICIENT_RESOURCES"
    with pytest.raises(BackendError) as e:
        backend.create_gpu_instance(0, 99, 0)
    assert e.value.code == "INVALID_ARGUMENT"


def test_ci_profile_not_in_gi_is_invalid_argument(backend):
    enable(backend, 0)
    g = backend.create_gpu_instance(0, gi(A100, "1g.5gb"), 3)
    with pytest.raises(BackendError) as e:
        backend.create_compute_instance(0, g.id, ci(A100, "7g.40gb", "7g.40gb"))  # enum 4: not in a 1g
    assert (e.value.gpu_index, e.value.code) == (0, "INVALID_ARGUMENT")
    assert "nvmlGpuInstanceCreateComputeInstance" not in called(backend)


def test_destroy_errors_and_success(backend):
    enable(backend, 0)
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


def test_gpu_instances_round_trip_with_ci_profiles_7_and_8_offered(backend):
    enable(backend, 1)
    g3 = backend.create_gpu_instance(1, gi(A100, "3g.20gb"), 4)
    c2 = backend.create_compute_instance(1, g3.id, ci(A100, "3g.20gb", "2c.3g.20gb"))
    c1 = backend.create_compute_instance(1, g3.id, ci(A100, "3g.20gb", "1c.3g.20gb"))
    g1 = backend.create_gpu_instance(1, gi(A100, "1g.5gb"), 0)
    g7 = backend.create_gpu_instance(1, gi(A100, "1g.5gb"), 1)
    listed = backend.gpu_instances(1)
    assert [(x.profile_id, x.start, x.size) for x in listed] == [(gi(A100, "1g.5gb"), 0, 1), (gi(A100, "1g.5gb"), 1, 1), (gi(A100, "3g.20gb"), 4, 4)]
    assert (listed[0].id, listed[1].id) == (g1.id, g7.id) == (7, 8)  # 1g ids are 7 + slot
    cis = listed[2].compute_instances
    assert [(x.id, x.profile_id, x.start, x.size, x.uuid) for x in cis] == [
        (c2.id, c2.profile_id, 0, 2, c2.uuid),
        (c1.id, c1.profile_id, 2, 1, c1.uuid),
    ]
    assert "nvmlGpuInstanceGetComputeInstances" in called(backend)
    # the driver also offered CI profiles 7 (1 slice rev1) and 8 (7 slice NVL where it fits)
    offered = backend._ci_profile_map(1, backend._gi_handles(1, backend._handle(1, "t"))[-1])
    assert 7 in offered and offered[ci(A100, "3g.20gb", "1c.3g.20gb")][0] == ci(A100, "3g.20gb", "1c.3g.20gb")


def test_compute_instance_profile_info_falls_back_to_v1_call(tmp_path):
    b = make(tmp_path, missing=("nvmlGpuInstanceGetComputeInstanceProfileInfoV",))
    enable(b, 0)
    g = b.create_gpu_instance(0, gi(A100, "3g.20gb"), 0)
    c = b.create_compute_instance(0, g.id, ci(A100, "3g.20gb", "3g.20gb"))
    assert [x.uuid for x in b.gpu_instances(0)[0].compute_instances] == [c.uuid]
    assert "nvmlGpuInstanceGetComputeInstanceProfileInfo" in called(b)


def test_strict_count_stand_in_passes(tmp_path):
    """With ``*count`` read as the buffer's capacity, a count of 0 is
    INSUFFICIENT_SIZE: lists must pass their buffer's length."""
    b = make(tmp_path, strict_count=True)
    enable(b, 0)
    for s in range(3):
        g = b.create_gpu_instance(0, gi(A100, "1g.5gb"), s)
        b.create_compute_instance(0, g.id, ci(A100, "1g.5gb", "1g.5gb"))
    listed = b.gpu_instances(0)
    assert [x.start for x in listed] == [0, 1, 2]
    assert all(len(x.compute_instances) == 1 for x in listed)
    assert b.possible_placements(0, gi(A100, "1g.5gb")) == tuple((s, 1) for s in range(7))


def test_processes_from_the_node(backend):
    me = os.getpid()
    backend.attach(0, me)
    procs = backend.processes(0)
    assert [(p.pid, p.used_memory_mib, p.gpu_index) for p in procs] == [(me, 0, 0)]
    assert backend.processes(1) == ()


def test_processes_on_mig_devices_name_their_gpu_and_compute_instance(backend):
    enable(backend, 0)
    g = backend.create_gpu_instance(0, gi(A100, "3g.20gb"), 4)
    c = backend.create_compute_instance(0, g.id, ci(A100, "3g.20gb", "3g.20gb"))
    backend.sim.attach_device(c.uuid, os.getpid())
    procs = backend.processes(0)
    assert [(p.pid, p.gi_id, p.ci_id) for p in procs] == [(os.getpid(), g.id, c.id)]
    with pytest.raises(BackendError) as e:
        backend.destroy_compute_instance(0, g.id, c.id)  # a process runs on it
    assert e.value.code == "IN_USE"


def test_processes_on_a_driver_without_the_v3_calls(tmp_path):
    """pynvml's unversioned call raises NVMLLibraryMismatchError (not an
    NVMLError) when the driver lacks _v3; the _v2 call answers instead."""
    b = make(tmp_path, missing=("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3"))
    b.attach(1, os.getpid())
    if not hasattr(b._nv, "nvmlDeviceGetComputeRunningProcesses_v2"):
        # bindings older than 13.x have no _v2 call: a BackendError, never an escaping exception
        with pytest.raises(BackendError, match="FUNCTION_NOT_FOUND"):
            b.processes(1)
        return
    assert [p.pid for p in b.processes(1)] == [os.getpid()]
    assert "nvmlDeviceGetComputeRunningProcesses_v2" in called(b)


@pytest.mark.parametrize(
    "call, symbol, error, code",
    [
        (lambda b: b.gpus(), "nvmlDeviceGetName", "GPU_IS_LOST", "GPU_IS_LOST"),
        (lambda b: b.mig_mode(1), "nvmlDeviceGetMigMode", "UNKNOWN", "UNKNOWN"),
        (lambda b: b.set_mig_mode(1, True), "nvmlDeviceSetMigMode", "NO_PERMISSION", "NO_PERMISSION"),
        (lambda b: b.processes(1), "nvmlDeviceGetComputeRunningProcesses_v3", "NO_PERMISSION", "NO_PERMISSION"),
        (lambda b: b.gpu_instances(1), "nvmlDeviceGetGpuInstances", "UNKNOWN", "UNKNOWN"),
        (lambda b: b.create_gpu_instance(1, 19, 0), "nvmlDeviceCreateGpuInstanceWithPlacement", "INSUFFICIENT_RESOURCES", "INSUFFICIENT_RESOURCES"),
        (lambda b: b.create_compute_instance(1, 7, 0), "nvmlGpuInstanceCreateComputeInstance", "INSUFFICIENT_RESOURCES", "INSUFFICIENT_RESOURCES"),
        (lambda b: b.destroy_compute_instance(1, 7, 0), "nvmlComputeInstanceDestroy", "IN_USE", "IN_USE"),
        (lambda b: b.destroy_gpu_instance(1, 7), "nvmlGpuInstanceDestroy", "IN_USE", "IN_USE"),
        (lambda b: b.gpus(), "nvmlDeviceGetHandleByIndex_v2", "GPU_IS_LOST", "GPU_IS_LOST"),
    ],
)
def test_every_nvml_error_names_gpu_action_and_code(backend, call, symbol, error, code):
    enable(backend, 1)
    if "ComputeInstance" in symbol or symbol in ("nvmlGpuInstanceDestroy", "nvmlDeviceGetGpuInstances"):
        g = backend.create_gpu_instance(1, gi(A100, "1g.5gb"), 0)
        assert g.id == 7  # a 1g at slot 0; the calls above use it
        if symbol == "nvmlComputeInstanceDestroy":
            backend.create_compute_instance(1, g.id, 0)
    backend.lib.fail(symbol, getattr(codes(backend), f"NVML_ERROR_{error}"))
    with pytest.raises(BackendError) as e:
        call(backend)
    expected_gpu = 0 if symbol in ("nvmlDeviceGetName", "nvmlDeviceGetHandleByIndex_v2") else 1
    assert (e.value.gpu_index, e.value.code) == (expected_gpu, code)
    assert str(e.value).startswith(f"GPU {expected_gpu}: ") and code in str(e.value)


# --- reset -----------------------------------------------------------------------


def logging_smi(tmp_path: Path, body: str) -> tuple[Path, Path]:
    script = tmp_path / "nvidia-smi"
    log = tmp_path / "smi.log"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script, log


def with_smi(backend: NvmlOverSim, script: Path, **kw) -> NvmlBackend:
    """Another backend of this process on the same NVML session, resetting
    with ``script`` as nvidia-smi."""
    b = NvmlBackend(nvml=backend._nv, nvidia_smi=str(script), **kw)
    _EXTRA.append(b)
    return b


_EXTRA: list[NvmlBackend] = []


@pytest.fixture(autouse=True)
def _close_extra():
    yield
    while _EXTRA:
        _EXTRA.pop().close()


def test_reset_is_one_call_by_bus_id_with_nvml_released(backend, tmp_path):
    """nvidia-smi refuses to reset while any NVML client is open, this
    process included: the stand-in's refuses too, so the reset only happens
    when the backend has shut NVML down (and it comes back afterwards)."""
    real_smi = " ".join(nvml_standin.nvidia_smi_argv(backend.lib))
    script, log = logging_smi(tmp_path, f'exec {real_smi} "$@"')
    b = with_smi(backend, script)
    b.set_mig_mode(0, True)
    b.set_mig_mode(1, True)
    b.reset([1, 0, 1])
    assert backend.snapshot().ops["reset"] == 2
    assert b.mig_mode(0) == b.mig_mode(1) == MigMode(True, True)
    assert log.read_text().splitlines() == ["-r -i 00000000:0F:00.0,00000000:07:00.0"]
    assert backend.lib.sessions == 1  # initialised again afterwards
    assert backend.lib.calls.count("nvmlShutdown") == 1


def test_reset_while_another_nvml_client_is_open_is_refused(backend):
    """nvidia-smi refuses a reset while any NVML client runs (a monitoring
    agent here); the stand-in refuses the same way and nothing is reset."""
    code = (
        "import sys\n"
        "from migmanagerd.gpu import nvml_standin\n"
        f"nv = nvml_standin.install(nvml_standin.StandinLibrary({str(backend.state_path)!r}))\n"
        "nv.nvmlInit(); print('ready', flush=True); sys.stdin.read()\n"
    )
    agent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "ready"
        backend.set_mig_mode(0, True)  # the agent holds NVML: IN_USE, the change left pending
        assert backend.mig_mode(0) == MigMode(False, True)
        with pytest.raises(BackendError) as e:
            backend.reset([0])
        assert (e.value.gpu_index, e.value.code) == (0, "IN_USE")
        assert "In use by another client" in str(e.value)
        assert backend.mig_mode(0) == MigMode(False, True)
        assert backend.snapshot().ops["reset"] == 0
    finally:
        agent.stdin.close()
        agent.wait(timeout=30)
    backend.reset([0])
    assert backend.mig_mode(0) == MigMode(True, True)


def test_reset_failure_carries_the_output(backend, tmp_path):
    script, _ = logging_smi(tmp_path, "echo 'Unable to reset GPU 00000000:07:00.0: In use by another client' >&2; exit 255")
    with pytest.raises(BackendError) as e:
        with_smi(backend, script).reset([0])
    assert (e.value.gpu_index, e.value.code) == (0, "IN_USE")
    assert "In use by another client" in str(e.value)
    assert backend.lib.sessions == 1  # NVML is back even after a failed reset


def test_reset_other_failure(backend, tmp_path):
    script, _ = logging_smi(tmp_path, "echo 'GPU is lost'; exit 15")
    with pytest.raises(BackendError) as e:
        with_smi(backend, script).reset([3])
    assert (e.value.gpu_index, e.value.code) == (3, "RESET_FAILED")
    assert "exited 15" in str(e.value)


def test_reset_timeout_is_bounded(tmp_path):
    b = make(tmp_path)
    script, _ = logging_smi(tmp_path, "exec sleep 30")
    with pytest.raises(BackendError) as e:
        with_smi(b, script, reset_timeout_s=0.2).reset([0])
    assert e.value.code == "TIMEOUT"


def test_reset_without_nvidia_smi(backend, monkeypatch):
    monkeypatch.setenv("MIGMANAGERD_NVIDIA_SMI", "/nonexistent/nvidia-smi")
    b = NvmlBackend(nvml=backend._nv)
    try:
        with pytest.raises(BackendError) as e:
            b.reset([0])
        assert e.value.code == "NOT_FOUND" and "/nonexistent/nvidia-smi" in str(e.value)
    finally:
        b.close()


def test_reset_available_from_sysfs(backend, tmp_path):
    root = tmp_path / "sys"
    dev = root / "bus" / "pci" / "devices" / "0000:07:00.0"
    dev.mkdir(parents=True)
    (dev / "reset").write_text("")
    (root / "bus" / "pci" / "devices" / "0000:0f:00.0").mkdir()  # no reset file: passthrough
    b = NvmlBackend(nvml=backend._nv, sysfs_root=root)
    try:
        assert b.reset_available(0) is True
        assert b.reset_available(1) is False
    finally:
        b.close()


def test_pci_sysfs_name():
    assert pci_sysfs_name("00000000:0F:00.0") == "0000:0f:00.0"
    assert pci_sysfs_name("00000001:B7:00.0") == "0001:b7:00.0"


# --- the stand-in itself is strict -----------------------------------------------------------


def test_standin_rejects_forged_handles_calls_before_init_and_unknown_symbols(tmp_path):
    init_node(tmp_path / "n.json", "1xA100-SXM4-40GB", catalog=CATALOG)
    nv = nvml_standin.install(nvml_standin.StandinLibrary(tmp_path / "n.json", catalog=CATALOG), nvml_standin.load_bindings())
    nv.nvmlInit()
    nv.nvmlShutdown()
    with pytest.raises(nv.NVMLError) as e:
        nv.nvmlDeviceGetCount()
    assert e.value.value == nv.NVML_ERROR_UNINITIALIZED
    nv.nvmlInit()
    try:
        forged = ctypes.cast(ctypes.pointer(ctypes.c_uint64(1)), nv.c_nvmlDevice_t)
        with pytest.raises(nv.NVMLError) as e:
            nv.nvmlDeviceGetName(forged)
        assert e.value.value == nv.NVML_ERROR_INVALID_ARGUMENT
        with pytest.raises(nv.NVMLError) as e:
            nv.nvmlDeviceCreateGpuInstance(nv.nvmlDeviceGetHandleByIndex(0), 0)  # driver-chosen placement: not offered
        assert e.value.value == nv.NVML_ERROR_FUNCTION_NOT_FOUND
        assert str(nv.NVMLError(nv.NVML_ERROR_IN_USE)) == "In use by another client"  # nvmlErrorString
    finally:
        nv.nvmlShutdown()


def test_standin_checks_struct_versions_v2_and_v3_by_version_byte(tmp_path):
    b = make(tmp_path, "1xA100-SXM4-40GB")
    enable(b, 0)
    h = b._nv.nvmlDeviceGetHandleByIndex(0)
    fn = b._nv._nvmlGetFunctionPointer("nvmlDeviceGetGpuInstanceProfileInfoV")
    selector = A100.gi_profile("3g.20gb").selector
    v3 = S.GiProfileInfoV3(version=S.GI_PROFILE_INFO_V3)
    assert fn(h, selector, ctypes.byref(v3)) == 0
    assert (v3.id, v3.sliceCount, v3.memorySizeMB, v3.name) == (gi(A100, "3g.20gb"), 3, A100.gi_profile("3g.20gb").memory_mib, b"MIG 3g.20gb")
    v2 = b._nv.c_nvmlGpuInstanceProfileInfo_v2_t()  # pynvml's own struct, version 2
    assert fn(h, selector, ctypes.byref(v2)) == 0 and v2.memorySizeMB == v3.memorySizeMB
    bad = S.GiProfileInfoV2(version=(1 << 24) | ctypes.sizeof(S.GiProfileInfoV2))
    assert fn(h, selector, ctypes.byref(bad)) == b._nv.NVML_ERROR_ARGUMENT_VERSION_MISMATCH


def test_stale_gpu_instance_handle_after_an_outside_destroy(tmp_path):
    """`nvidia-smi mig -dgi` from outside: a handle taken before is refused."""
    b = make(tmp_path, "1xA100-SXM4-40GB")
    enable(b, 0)
    g = b.create_gpu_instance(0, gi(A100, "7g.40gb"), 0)
    nv = b._nv
    handle = nv.nvmlDeviceGetGpuInstanceById(nv.nvmlDeviceGetHandleByIndex(0), g.id)
    b.sim.destroy_gpu_instance(0, g.id)
    b.sim.create_gpu_instance(0, gi(A100, "3g.20gb"), 0)  # another GI, maybe the same id
    with pytest.raises(nv.NVMLError) as e:
        nv.nvmlGpuInstanceGetInfo(handle)
    assert e.value.value == nv.NVML_ERROR_INVALID_ARGUMENT
    assert [x.profile_id for x in b.gpu_instances(0)] == [gi(A100, "3g.20gb")]


def test_max_mig_device_count_is_zero_with_mig_off(tmp_path):
    b = make(tmp_path, "1xA100-SXM4-40GB")
    h = b._nv.nvmlDeviceGetHandleByIndex(0)
    assert b._nv.nvmlDeviceGetMaxMigDeviceCount(h) == 0
    enable(b, 0)
    assert b._nv.nvmlDeviceGetMaxMigDeviceCount(h) == 7


# --- factory: MIGMANAGERD_BACKEND=nvml on a simulated node ----------------------------------


def test_factory_picks_backend(monkeypatch, tmp_path):
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(tmp_path / "s.json"))
    monkeypatch.setenv("MIGMANAGERD_SIM_NODE", "1xA30-24GB")
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "sim")
    assert open_backend().name == "sim"
    monkeypatch.setenv("MIGMANAGERD_NVML_STANDIN", "sim")
    nb = open_backend("nvml")
    try:
        assert nb.name == "nvml"
        assert [g.name for g in nb.gpus()] == ["NVIDIA A30"]
        nb.set_mig_mode(0, True)
        nb.reset([0])  # through the stand-in nvidia-smi, NVML released
        assert nb.mig_mode(0) == MigMode(True, True)
    finally:
        nb.close()
        nvml_standin.uninstall()
    with pytest.raises(UsageError, match="bogus"):
        open_backend("bogus")
    monkeypatch.setenv("MIGMANAGERD_NVML_STANDIN", "dcgm")
    with pytest.raises(UsageError, match="MIGMANAGERD_NVML_STANDIN"):
        open_backend("nvml")
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "gpu")
    with pytest.raises(UsageError, match="MIGMANAGERD_BACKEND"):
        open_backend()


# --- scripts/nvml_readonly_discovery.py ---------------------------------------------------


def _discovery_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("nvml_readonly_discovery", REPO / "scripts" / "nvml_readonly_discovery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_discovery_script_is_read_only_and_matches_catalog(backend, tmp_path):
    script = _discovery_script()
    enable(backend, 0)
    g = backend.create_gpu_instance(0, gi(A100, "3g.20gb"), 0)
    backend.create_compute_instance(0, g.id, ci(A100, "3g.20gb", "3g.20gb"))
    mark = len(backend.lib.calls)
    report = script.discover(backend._nv, catalog=CATALOG, sysfs_root=str(tmp_path))
    calls = called(backend, mark)
    assert not [n for n in calls if any(w in n for w in ("Set", "Create", "Destroy"))]
    assert calls[0] == "nvmlInitWithFlags" and calls[-1] == "nvmlShutdown"
    gpus = report["gpus"]
    assert report["driverversion"] == "575.57.08"
    assert [x["catalog_model"] for x in gpus] == ["A100-SXM4-40GB", "A100-SXM4-40GB", None, "H100-80GB"]
    assert gpus[0]["catalog_diff"] == [] and gpus[2]["catalog_diff"] == []
    assert gpus[2]["mig_mode"] is None
    assert gpus[1]["profiles"] and all(p.get("error") == "NOT_SUPPORTED" for p in gpus[1]["profiles"])  # MIG off
    assert gpus[1]["max_mig_devices"] == 0
    assert gpus[0]["instances"][0]["placement"] == [0, 4]
    assert gpus[0]["instances"][0]["compute_instances"][0]["placement"] == [0, 3]
    p3g = next(p for p in gpus[0]["profiles"] if p.get("id") == gi(A100, "3g.20gb"))
    assert p3g["placements"] == [[0, 4], [4, 4]]


def test_discovery_names_errors_and_falls_back_to_the_v1_call(tmp_path):
    """Error names come from the bindings (the read-only proxy hides them), so
    FUNCTION_NOT_FOUND is recognised and the v1 call is made."""
    script = _discovery_script()
    b = make(tmp_path, "1xA100-SXM4-40GB", missing=("nvmlDeviceGetGpuInstanceProfileInfoV",))
    enable(b, 0)
    report = script.discover(b._nv, catalog=CATALOG)
    profiles = report["gpus"][0]["profiles"]
    assert {p["id"] for p in profiles if "id" in p} == {p.nvml_id for p in A100.gi_profiles}
    assert report["gpus"][0]["catalog_diff"] == []
    diffs = script.compare_with_catalog(report["gpus"][0], CATALOG.find("A30-24GB"))  # wrong model on purpose
    assert diffs
    with pytest.raises(PermissionError):
        _ = script.ReadOnlyNvml(b._nv).nvmlDeviceSetMigMode


def test_threads_one_per_gpu(tmp_path):
    b = make(tmp_path, "4xA100-SXM4-40GB")
    for i in range(4):
        enable(b, i)
    errors = []

    def worker(i):
        try:
            for s in range(7):
                g = b.create_gpu_instance(i, gi(A100, "1g.5gb"), s)
                b.create_compute_instance(i, g.id, ci(A100, "1g.5gb", "1g.5gb"))
        except BackendError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    for i in range(4):
        listed = b.gpu_instances(i)
        assert [x.start for x in listed] == list(range(7))
        assert all(len(x.compute_instances) == 1 and x.compute_instances[0].uuid for x in listed)
