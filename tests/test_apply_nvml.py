"""The engine over the real NVML backend, against the strict pynvml fake:
the same plans and results as on the simulator, through NVML's calls."""

from __future__ import annotations

from collections import Counter

import pytest
from apply_helpers import catalog, default_configs, unfiltered_configs
from fake_pynvml import FakeNvml, install

from migmanagerd.apply import report as R
from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.gpu.nvml import NvmlBackend

WRITES = (
    "nvmlDeviceSetMigMode",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlGpuInstanceCreateComputeInstance",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
    "nvmlComputeInstanceDestroy",
    "nvmlGpuInstanceDestroy",
)


@pytest.fixture
def node(mocker):
    a100, h100 = catalog().find("A100-SXM4-40GB"), catalog().find("H100-80GB")
    fake = install(mocker, FakeNvml([a100, a100, None, h100]))
    backend = NvmlBackend(nvidia_smi="/nonexistent/nvidia-smi")
    # The A100s start with MIG on (it persists in the InfoROM); no reset needed here.
    for i in (0, 1):
        backend.set_mig_mode(i, True)
        fake.reset_gpu(i)
    yield fake, backend
    backend.close()


def _writes(fake, mark=0):
    return Counter(n for n in fake.names()[mark:] if n in WRITES)


def test_apply_assert_and_idempotence_over_nvml(node):
    fake, backend = node
    eng = ApplyEngine(backend, catalog=catalog())
    config = default_configs().configs["all-balanced"]
    report = eng.apply(config)
    assert report.exit_code == 0, report.gpus
    assert [r.index for r in report.gpus] == [0, 1, 3]  # GPU 2 has no MIG: skipped
    assert report.result(3).operations["set_mode"] == 1 and "reset" not in report.result(3).operations
    assert eng.assert_config(config) == []
    mark = len(fake.names())
    again = eng.apply(config)
    assert all(r.status == R.UNCHANGED for r in again.gpus)
    assert _writes(fake, mark) == Counter()


def test_transition_keeps_uuids_over_nvml(node):
    fake, backend = node
    eng = ApplyEngine(backend, catalog=catalog())
    configs = default_configs().configs
    eng.apply(configs["all-balanced"])
    before = {d.uuid for v in eng.observe().gpus if v.index in (0, 1) for d in v.devices if d.profile == "3g.20gb"}
    assert len(before) == 2
    cfg_unfiltered = unfiltered_configs().configs["all-3g.20gb"]
    # without a device-filter all-3g.20gb does not fit the H100, so use the A100 GPUs only.
    from migmanagerd.spec.config import parse_config

    cfg = parse_config(
        'version: v1\nmig-configs:\n  a:\n    - devices: [0, 1]\n      mig-enabled: true\n      mig-devices: {"3g.20gb": 2}\n',
        "a.yaml",
    ).configs["a"]
    assert not eng.plan(cfg_unfiltered).feasible
    report = eng.apply(cfg)
    assert report.exit_code == 0
    after = {d.uuid for v in eng.observe().gpus if v.index in (0, 1) for d in v.devices}
    assert before <= after


def test_nvml_error_mid_apply_rolls_that_gpu_back(node):
    fake, backend = node
    eng = ApplyEngine(backend, catalog=catalog())
    configs = default_configs().configs
    eng.apply(configs["all-balanced"])
    old = {v.index: sorted((d.profile, d.placement.start) for d in v.devices) for v in eng.observe().gpus}
    import pynvml as real

    fake.fail("nvmlDeviceCreateGpuInstanceWithPlacement", real.NVML_ERROR_INSUFFICIENT_RESOURCES)
    report = eng.apply(configs["all-1g.10gb"])
    statuses = {r.index: r.status for r in report.gpus}
    assert list(statuses.values()).count(R.ROLLED_BACK) == 1
    assert report.exit_code == 1
    now = {v.index: sorted((d.profile, d.placement.start) for d in v.devices) for v in eng.observe().gpus}
    for i, status in statuses.items():
        if status == R.ROLLED_BACK:
            assert now[i] == old[i]
