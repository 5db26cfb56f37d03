"""A failure at any step leaves each GPU in its old layout or its new one,
never empty or half-built, and the report says which."""

from __future__ import annotations

import pytest
from apply_helpers import default_configs, engine, layout, ops, shape, sim_node

from migmanagerd.apply import report as R
from migmanagerd.gpu.sim_faults import FAULTS_ENV, PROCESS_FAULTS

NODE = "2xA100-SXM4-40GB"

# (from, to, fault rule). GPU 1 is hit; GPU 0 must finish regardless,
# except where one reset call covers both GPUs.
CASES = [
    # geometry only: 1g.5gb x7 -> balanced keeps two 1g, destroys five, creates two
    ("all-1g.5gb", "all-balanced", "destroy_ci@1:1"),
    ("all-1g.5gb", "all-balanced", "destroy_ci@1:4"),
    ("all-1g.5gb", "all-balanced", "destroy_gi@1:1"),
    ("all-1g.5gb", "all-balanced", "destroy_gi@1:5"),
    ("all-1g.5gb", "all-balanced", "create_gi@1:1"),
    ("all-1g.5gb", "all-balanced", "create_gi@1:2"),
    ("all-1g.5gb", "all-balanced", "create_ci@1:1"),
    ("all-1g.5gb", "all-balanced", "create_ci@1:2"),
    # enabling: set mode, reset, then create
    ("all-disabled", "all-3g.20gb", "set_mode@1:1"),
    ("all-disabled", "all-3g.20gb", "reset:1"),
    ("all-disabled", "all-3g.20gb", "create_gi@1:2"),
    ("all-disabled", "all-3g.20gb", "create_ci@1:1"),
    # disabling: destroy everything, set mode, reset
    ("all-balanced", "all-disabled", "destroy_ci@1:2"),
    ("all-balanced", "all-disabled", "destroy_gi@1:4"),
    ("all-balanced", "all-disabled", "set_mode@1:1"),
    ("all-balanced", "all-disabled", "reset:1"),
]


def _hit_gpus(rule: str) -> set[int]:
    return {1} if "@1" in rule else {0, 1}


@pytest.mark.parametrize("start,target,rule", CASES, ids=[f"{a}->{b}:{r}" for a, b, r in CASES])
def test_fault_leaves_old_or_new_layout(tmp_path, monkeypatch, capsys, start, target, rule):
    backend = sim_node(tmp_path, NODE)
    eng = engine(backend)
    configs = default_configs().configs
    assert eng.apply(configs[start]).exit_code == 0
    old = layout(backend)
    PROCESS_FAULTS.reset()
    monkeypatch.setenv(FAULTS_ENV, rule)

    report = eng.apply(configs[target])
    monkeypatch.delenv(FAULTS_ENV)

    assert report.exit_code == 1
    now = layout(backend)
    still_wrong = {int(line.split()[1].rstrip(":")) for line in eng.assert_config(configs[target])}
    for i in (0, 1):
        status = report.result(i).status
        if i in _hit_gpus(rule):
            assert status == R.ROLLED_BACK, report.result(i)
            assert shape(now[i]) == shape(old[i]), f"GPU {i} not back in its old layout"
            assert report.result(i).error
        else:
            assert status == R.APPLIED
            assert i not in still_wrong
    print_report(report)
    out = capsys.readouterr().out
    assert "GPU 1: rolled-back" in out
    assert "not fully applied" in out


def test_untouched_devices_keep_their_uuids_through_a_rollback(tmp_path, monkeypatch):
    backend = sim_node(tmp_path, NODE)
    eng = engine(backend)
    configs = default_configs().configs
    eng.apply(configs["all-1g.5gb"])
    old = layout(backend)
    PROCESS_FAULTS.reset()
    monkeypatch.setenv(FAULTS_ENV, "create_gi@1:1")
    report = eng.apply(configs["all-balanced"])
    assert report.result(1).status == R.ROLLED_BACK
    now_uuids = {d[3] for d in layout(backend)[1][2]}
    old_uuids = {d[3] for d in old[1][2]}
    # two 1g.5gb stayed in place during the attempt: same UUIDs afterwards
    assert len(now_uuids & old_uuids) == 2


def test_failed_rollback_is_reported_as_such(tmp_path, monkeypatch, capsys):
    backend = sim_node(tmp_path, NODE)
    eng = engine(backend)
    configs = default_configs().configs
    eng.apply(configs["all-1g.5gb"])
    PROCESS_FAULTS.reset()
    # Every create on GPU 1 fails: the apply, and the undo's recreation too.
    monkeypatch.setenv(FAULTS_ENV, "create_gi@1:*")
    report = eng.apply(configs["all-balanced"])
    r1 = report.result(1)
    assert r1.status == R.ROLLBACK_FAILED
    assert "SIM_FAULT_INJECTED" in r1.rollback_error
    assert report.result(0).status == R.APPLIED
    assert report.exit_code == 1
    print_report(report)
    assert "GPU 1: rollback-failed" in capsys.readouterr().out


def test_failure_before_any_write_changes_nothing(tmp_path, monkeypatch):
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    eng = engine(backend)
    eng.apply(default_configs().configs["all-disabled"])
    before_ops, before = ops(backend), layout(backend)
    PROCESS_FAULTS.reset()
    monkeypatch.setenv(FAULTS_ENV, "set_mode:*")
    report = eng.apply(default_configs().configs["all-balanced"])
    assert report.result(0).status == R.ROLLED_BACK
    assert layout(backend) == before
    assert ops(backend) == before_ops


class _FlakyReads:
    """Wraps a backend; the chosen read fails from its Nth call on (a driver hiccup)."""

    def __init__(self, inner, method: str, from_call: int):
        self._inner, self._method, self._from = inner, method, from_call
        self.name = inner.name
        self.calls = 0

    def __getattr__(self, attr):
        target = getattr(self._inner, attr)
        if attr != self._method:
            return target

        def wrapped(*args):
            self.calls += 1
            if self.calls >= self._from:
                from migmanagerd.gpu.backend import BackendError

                raise BackendError(args[0] if args else None, f"read ({attr})", "UNKNOWN", "flaky")
            return target(*args)

        return wrapped


def test_read_failure_after_writes_rolls_back_instead_of_crashing(tmp_path):
    backend = sim_node(tmp_path, "1xA100-SXM4-40GB")
    eng = engine(backend)
    configs = default_configs().configs
    eng.apply(configs["all-1g.5gb"])
    old = layout(backend)
    # Observation before the apply reads gpu_instances once; the read-back after
    # the writes (the 3rd call: plan, re-plan, verify) fails.
    flaky = _FlakyReads(backend, "gpu_instances", 3)
    report = engine(flaky).apply(configs["all-balanced"])
    r = report.result(0)
    # undone, but the GPU cannot be read to prove it: reported as not restored
    assert r.status == R.ROLLBACK_FAILED
    assert "cannot read the GPU back" in r.error and "unreadable" in r.rollback_error
    # the undo itself writes through the real backend: old shape is back
    assert shape(layout(backend)[0]) == shape(old[0])
    assert report.exit_code == 1


def print_report(report) -> None:
    """The per-GPU lines and summary an operator reads after an engine apply."""
    for result in report.gpus:
        print(result.describe())
    print(report.summary())
