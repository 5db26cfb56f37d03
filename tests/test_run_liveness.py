"""A journal is "in flight" only while its run lives; a stale one can be seen and cleared."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from node_root import sim_node_root

from migmanagerd.cli.main import main
from migmanagerd.service.run_liveness import journal_is_live, process_start_epoch
from migmanagerd.service.state import Journal, StateStore, utc_now

BOOT = "boot-1"


@pytest.fixture
def runner():
    """A live process whose command line names migmanagerd, as a run's does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "migmanagerd", "service"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def journal_for(pid: int, started_at: str | None = None, boot_id: str = BOOT) -> Journal:
    return Journal("all-balanced", "applying mode", started_at or utc_now(), pid, ("kubelet.service",), boot_id)


def test_a_journal_of_a_live_run_is_live(runner):
    assert process_start_epoch(runner.pid) is not None
    assert journal_is_live(journal_for(runner.pid), BOOT)


def test_a_reused_pid_is_not_the_journals_run(runner):
    # the process with that PID started after the journal was opened
    assert not journal_is_live(journal_for(runner.pid, "2020-01-01T00:00:00Z"), BOOT)


def test_a_journal_from_another_boot_is_stale(runner):
    assert not journal_is_live(journal_for(runner.pid), "boot-2")


def test_a_dead_or_foreign_pid_is_stale():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not journal_is_live(journal_for(int(done.stdout)), BOOT)
    sleeper = subprocess.Popen(["sleep", "30"])  # alive, but not migmanagerd
    try:
        assert not journal_is_live(journal_for(sleeper.pid), BOOT)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def _with_journal(tmp_path, monkeypatch, journal: Journal):
    paths = sim_node_root(tmp_path, monkeypatch)
    paths.boot_id_file.parent.mkdir(parents=True, exist_ok=True)
    paths.boot_id_file.write_text(BOOT + "\n")
    store = StateStore(paths)
    store.update(lambda s: replace(s, journal=journal))
    return store


def test_status_shows_a_stale_journal_and_journal_clear_forgets_it(tmp_path, monkeypatch, capsys):
    store = _with_journal(tmp_path, monkeypatch, journal_for(999_999_999))
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "In flight" not in text
    assert "Stale journal:   run pid 999999999" in text and "migmanagerd journal clear" in text
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["journal"]["live"] is False
    assert main(["journal", "show", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["live"] is False and doc["journal"]["stopped_units"] == ["kubelet.service"]
    assert main(["journal", "clear"]) == 0
    assert "kubelet.service" in capsys.readouterr().out
    assert store.load().state.journal is None
    assert main(["journal"]) == 0
    assert "no journal" in capsys.readouterr().out


def test_a_live_runs_journal_is_in_flight_and_not_cleared(tmp_path, monkeypatch, capsys, runner):
    store = _with_journal(tmp_path, monkeypatch, journal_for(runner.pid))
    assert main(["status"]) == 0
    assert f"In flight:       run pid {runner.pid}" in capsys.readouterr().out
    assert main(["journal", "clear"]) == 1
    assert "still running" in capsys.readouterr().err
    assert store.load().state.journal is not None
