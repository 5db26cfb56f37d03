"""The CDI refresh decision and what carrying it out does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from migmanagerd.integrations.cdi import NONE, RESTART_UNIT, RUN_COMMAND, CdiAction, cdi_action, perform_cdi_action
from migmanagerd.integrations.settings import CdiSettings

UNIT = "nvidia-cdi-refresh.service"
CMD = ("nvidia-ctk", "cdi", "generate", "--output=/var/run/cdi/nvidia.yaml")


@pytest.mark.parametrize(
    "settings, changed, exists, kind",
    [
        (CdiSettings(enabled=False), True, True, NONE),
        (CdiSettings(enabled=True), False, True, NONE),
        (CdiSettings(enabled=True), True, True, RESTART_UNIT),
        (CdiSettings(enabled=True, command=CMD), True, True, RESTART_UNIT),
        (CdiSettings(enabled=True, command=CMD), True, False, RUN_COMMAND),
        (CdiSettings(enabled=True, unit=None, command=CMD), True, True, RUN_COMMAND),
        (CdiSettings(enabled=True), True, False, NONE),
        (CdiSettings(enabled=True, command=CMD), False, False, NONE),
    ],
)
def test_decision_table(settings, changed, exists, kind):
    assert cdi_action(settings, changed, exists).kind == kind


def test_decision_details():
    restart = cdi_action(CdiSettings(enabled=True), True, True)
    assert restart == CdiAction(RESTART_UNIT, f"devices changed; {UNIT} exists", unit=UNIT)
    run = cdi_action(CdiSettings(enabled=True, command=CMD), True, False)
    assert run.command == CMD and not run.problem
    gap = cdi_action(CdiSettings(enabled=True), True, False)
    assert gap.problem and UNIT in gap.reason
    assert not cdi_action(CdiSettings(enabled=True), False, False).problem


def test_restart_is_enqueued_not_waited_for():
    enqueued: list[str] = []
    out = perform_cdi_action(cdi_action(CdiSettings(enabled=True), True, True), CdiSettings(enabled=True),
                             enqueue_restart=enqueued.append)
    assert enqueued == [UNIT] and out["status"] == "enqueued"


def test_command_runs_with_timeout_and_failures_are_reported(tmp_path):
    marker = tmp_path / "ran"
    good = CdiSettings(enabled=True, unit=None, command=(sys.executable, "-c", f"open({str(marker)!r}, 'w')"))
    out = perform_cdi_action(cdi_action(good, True, False), good, enqueue_restart=pytest.fail)
    assert out["status"] == "ok" and marker.exists()

    bad = CdiSettings(enabled=True, unit=None, command=(sys.executable, "-c", "import sys; sys.exit('no driver')"))
    out = perform_cdi_action(cdi_action(bad, True, False), bad, enqueue_restart=pytest.fail)
    assert out["status"] == "failed" and out["error"] == "command exited 1: no driver"

    missing = CdiSettings(enabled=True, unit=None, command=(str(tmp_path / "nvidia-ctk"),))
    out = perform_cdi_action(cdi_action(missing, True, False), missing, enqueue_restart=pytest.fail)
    assert out["status"] == "failed" and "cannot run" in out["error"]


def test_command_timeout_is_bounded():
    seen = {}

    def run(argv, **kw):
        seen.update(kw)
        raise subprocess.TimeoutExpired(argv, kw["timeout"])

    s = CdiSettings(enabled=True, unit=None, command=("sleep", "100"), timeout_s=7)
    out = perform_cdi_action(cdi_action(s, True, False), s, enqueue_restart=pytest.fail, run=run)
    assert seen["timeout"] == 7
    assert out == {"action": RUN_COMMAND, "reason": "devices changed; no unit configured",
                   "command": ["sleep", "100"], "status": "failed", "error": "command timed out after 7s"}


def test_enabled_without_unit_or_command_is_a_reported_gap():
    s = CdiSettings(enabled=True)
    out = perform_cdi_action(cdi_action(s, True, False), s, enqueue_restart=pytest.fail)
    assert out["status"] == "failed" and "no command is configured" in out["error"]
