"""The boot-time run undoes a whole GPU change, mode included, when creating
its MIG devices fails after the same run switched MIG on (issue 10 item 1)."""

from __future__ import annotations

import logging

from node_root import sim_node_root

from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.cli.main import main
from migmanagerd.gpu.sim import SimBackend
from migmanagerd.gpu.sim_faults import PROCESS_FAULTS
from migmanagerd.service.run import ServiceOptions, ServiceRun
from migmanagerd.service.state import StateStore


class Quiet:
    def status(self, text: str) -> None:
        pass

    def failed(self, text: str) -> None:
        pass

    def extend_timeout(self, seconds: float) -> None:
        pass


def test_failed_create_after_a_mode_change_returns_the_gpu_to_mig_off(tmp_path, monkeypatch):
    paths = sim_node_root(tmp_path, monkeypatch, spec="1xA100-SXM4-40GB")
    PROCESS_FAULTS.reset()  # faults count calls per process: this run's 2nd create_gi
    monkeypatch.setenv("MIGMANAGERD_SIM_FAULTS", "create_gi:2")  # the second of 2x3g.20gb fails
    outcome = ServiceRun(ServiceOptions(selected_config="all-3g.20gb"), paths, notifier=Quiet()).run()
    monkeypatch.delenv("MIGMANAGERD_SIM_FAULTS")

    assert outcome.exit_code == 1, outcome.message
    backend = SimBackend()
    try:
        mode = backend.mig_mode(0)
        assert (mode.current, mode.pending) == (False, False), "MIG must be off again, as before the run"
        assert list(backend.gpu_instances(0)) == []
    finally:
        backend.close()
    last = StateStore(paths).load().state.last_run
    assert last is not None and last.result == "failed"
    gpu = last.gpus["0"]
    assert gpu["status"] == "rolled-back", gpu
    # one record for the GPU: the mode switch and its undo are both counted
    assert gpu["operations"]["set_mode"] == 2 and gpu["operations"]["create_gi"] == 1


def test_a_mode_that_cannot_be_restored_is_reported_rollback_failed_and_shown_by_status(tmp_path, monkeypatch, capsys):
    paths = sim_node_root(tmp_path, monkeypatch, spec="1xA100-SXM4-40GB")
    PROCESS_FAULTS.reset()
    # the reset that activates MIG works; the one that would switch it off again fails
    monkeypatch.setenv("MIGMANAGERD_SIM_FAULTS", "create_gi:2,reset:2")
    outcome = ServiceRun(ServiceOptions(selected_config="all-3g.20gb"), paths, notifier=Quiet()).run()
    monkeypatch.delenv("MIGMANAGERD_SIM_FAULTS")

    assert outcome.exit_code == 1
    assert "rollback-failed" in outcome.message and "reset" in outcome.message, outcome.message
    gpu = StateStore(paths).load().state.last_run.gpus["0"]
    assert gpu["status"] == "rollback-failed"
    assert "reset" in gpu["rollback_error"], gpu

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "GPU 0: rollback-failed" in out, out


def test_an_unexpected_error_is_logged_with_its_traceback_at_error_priority(tmp_path, monkeypatch, caplog):
    paths = sim_node_root(tmp_path, monkeypatch, spec="1xA100-SXM4-40GB")

    def broken_plan(self, config, *, mode_only=False, state=None):
        raise RuntimeError("a bug in planning")

    monkeypatch.setattr(ApplyEngine, "plan", broken_plan)
    with caplog.at_level(logging.ERROR, logger="migmanagerd"):
        outcome = ServiceRun(ServiceOptions(selected_config="all-3g.20gb"), paths, notifier=Quiet()).run()
    assert outcome.exit_code == 1
    assert outcome.message == "unexpected error: RuntimeError: a bug in planning"
    records = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert records, "no error record with a traceback"
    assert "broken_plan" in caplog.text  # the traceback itself, not only the message
    assert StateStore(paths).load().state.last_run.result == "failed"
