"""The engine over the real NVML backend (nvidia-ml-py + the NVML stand-in on
a simulated node): what only NVML does — activation statuses, resets that
need NVML released — and the engine's answer to each."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from apply_helpers import NvmlOverSim, catalog, close_backends, default_configs, layout, ops, unfiltered_configs

from migmanagerd.apply import report as R
from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.apply.rollback import GpuWriter
from migmanagerd.gpu.backend import BackendError, MigMode
from migmanagerd.gpu.sim import init_node
from migmanagerd.spec.config import parse_config

WRITES = (
    "nvmlDeviceSetMigMode",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlGpuInstanceCreateComputeInstance",
    "nvmlComputeInstanceDestroy",
    "nvmlGpuInstanceDestroy",
)


@pytest.fixture(autouse=True)
def _close():
    yield
    close_backends()


def nvml_node(tmp_path, spec="2xA100-SXM4-40GB,1x0x1FB010DE,1xH100-80GB", *, no_reset=False, **standin) -> NvmlOverSim:
    path = tmp_path / "node.json"
    init_node(path, spec, catalog=catalog(), no_reset=no_reset)
    return NvmlOverSim(path, **standin)


def _writes(b: NvmlOverSim, mark: int = 0) -> Counter:
    return Counter(n for n in b.lib.calls[mark:] if n in WRITES)


def balanced():
    return default_configs().configs["all-balanced"]


# --- activation status: the change is pending, the engine resets or asks for a reboot ---


def test_activation_in_use_on_ampere_ends_in_one_reset(tmp_path):
    """A monitoring agent held the GPUs when the mode was set: IN_USE, the
    change pending. The engine resets (both GPUs, one call) and goes on."""
    b = nvml_node(tmp_path, "2xA100-SXM4-40GB", busy_gpus=(0, 1))
    report = ApplyEngine(b, catalog=catalog()).apply(balanced())
    assert report.exit_code == 0, report.gpus
    assert report.mode.reset == (0, 1)
    assert ops(b)["reset"] == 2 and ops(b)["create_gi"] > 0
    assert all(v[:2] == (True, True) for v in layout(b).values())


def test_activation_in_use_with_holders_that_stay_undoes_the_pending_change(tmp_path):
    """Processes keep holding the GPU: IN_USE with the change pending, the
    reset refused. The journal holds the mode change, so the undo sets it
    back: nothing flips at the next reboot behind our back."""
    b = nvml_node(tmp_path, "1xA100-SXM4-40GB")
    b.attach(0, os.getpid())
    report = ApplyEngine(b, catalog=catalog()).apply(balanced())
    assert report.exit_code == 1
    assert report.result(0).status == R.ROLLED_BACK, report.result(0)
    assert "IN_USE" in (report.result(0).error or "")
    assert b.mig_mode(0) == MigMode(current=False, pending=False)
    assert "reset" not in ops(b)


def test_activation_not_supported_in_a_vm_ends_in_guarded_reboot(tmp_path):
    """A passthrough VM answers NOT_SUPPORTED with the change pending (NVIDIA's
    MIG guide): reboot required, no geometry, the change kept for the reboot."""
    b = nvml_node(tmp_path, "2xA100-SXM4-40GB", no_reset=True)
    report = ApplyEngine(b, catalog=catalog()).apply(balanced())
    assert report.exit_code == 1
    assert report.reboot_required == (0, 1) and report.mode.reboot_required == (0, 1)
    assert "create_gi" not in ops(b) and "reset" not in ops(b)
    assert all(v[:2] == (False, True) for v in layout(b).values())


class RecordsThenFails:
    """A driver that records the mode change and still fails the call."""

    def __init__(self, inner: NvmlOverSim) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def set_mig_mode(self, index: int, enabled: bool) -> None:
        self.inner.set_mig_mode(index, enabled)
        raise BackendError(index, "enable MIG mode", "UNKNOWN", "recorded, then failed")


def test_mode_change_is_journaled_before_the_call_that_can_leave_it_pending(tmp_path):
    b = nvml_node(tmp_path, "1xA100-SXM4-40GB")
    writer = GpuWriter(RecordsThenFails(b), 0)
    with pytest.raises(BackendError):
        writer.set_mode(True, previous=False)
    assert b.mig_mode(0) == MigMode(False, True)
    assert writer.wrote
    writer.backend = b  # undo through the real backend
    assert writer.rollback() == []
    assert b.mig_mode(0) == MigMode(False, False)


def test_a_mode_call_that_changed_nothing_leaves_no_journal(tmp_path):
    b = nvml_node(tmp_path)
    writer = GpuWriter(b, 2)  # GPU 2 has no MIG: NOT_SUPPORTED, nothing recorded
    with pytest.raises(BackendError):
        writer.set_mode(True, previous=False)
    assert not writer.wrote


# --- the ordinary paths, through NVML's calls ---


def test_apply_assert_and_idempotence_over_nvml(tmp_path):
    b = nvml_node(tmp_path)
    eng = ApplyEngine(b, catalog=catalog())
    report = eng.apply(balanced())
    assert report.exit_code == 0, report.gpus
    assert [r.index for r in report.gpus] == [0, 1, 3]  # GPU 2 has no MIG: skipped
    assert report.result(3).operations["set_mode"] == 1 and "reset" not in report.result(3).operations
    assert report.mode.reset == (0, 1)
    assert eng.assert_config(balanced()) == []
    mark = len(b.lib.calls)
    again = eng.apply(balanced())
    assert all(r.status == R.UNCHANGED for r in again.gpus)
    assert _writes(b, mark) == Counter()


def test_transition_keeps_uuids_over_nvml(tmp_path):
    b = nvml_node(tmp_path)
    eng = ApplyEngine(b, catalog=catalog())
    eng.apply(balanced())
    before = {d.uuid for v in eng.observe().gpus if v.index in (0, 1) for d in v.devices if d.profile == "3g.20gb"}
    assert len(before) == 2
    # without a device-filter all-3g.20gb does not fit the H100, so use the A100 GPUs only
    assert not eng.plan(unfiltered_configs().configs["all-3g.20gb"]).feasible
    cfg = parse_config(
        'version: v1\nmig-configs:\n  a:\n    - devices: [0, 1]\n      mig-enabled: true\n      mig-devices: {"3g.20gb": 2}\n',
        "a.yaml",
    ).configs["a"]
    report = eng.apply(cfg)
    assert report.exit_code == 0
    after = {d.uuid for v in eng.observe().gpus if v.index in (0, 1) for d in v.devices}
    assert before <= after


def test_nvml_error_mid_apply_rolls_that_gpu_back(tmp_path):
    b = nvml_node(tmp_path)
    eng = ApplyEngine(b, catalog=catalog())
    configs = default_configs().configs
    eng.apply(configs["all-balanced"])
    old = {v.index: sorted((d.profile, d.placement.start) for d in v.devices) for v in eng.observe().gpus}
    b.lib.fail("nvmlDeviceCreateGpuInstanceWithPlacement", b._nv.NVML_ERROR_INSUFFICIENT_RESOURCES)
    report = eng.apply(configs["all-1g.10gb"])
    statuses = {r.index: r.status for r in report.gpus}
    assert list(statuses.values()).count(R.ROLLED_BACK) == 1
    assert report.exit_code == 1
    now = {v.index: sorted((d.profile, d.placement.start) for d in v.devices) for v in eng.observe().gpus}
    for i, status in statuses.items():
        if status == R.ROLLED_BACK:
            assert now[i] == old[i]


def test_strict_count_stand_in_runs_a_whole_apply(tmp_path):
    b = nvml_node(tmp_path, "2xA100-SXM4-40GB", strict_count=True)
    eng = ApplyEngine(b, catalog=catalog())
    assert eng.apply(default_configs().configs["all-1g.5gb"]).exit_code == 0
    assert eng.assert_config(default_configs().configs["all-1g.5gb"]) == []
