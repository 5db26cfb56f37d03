"""state.json: atomic writes, corrupt files set aside, the journal, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from migmanagerd.service import state as state_mod
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.state import (
    Journal,
    LastRun,
    RebootMarker,
    State,
    StateStore,
    state_from_json,
    state_to_json,
)


@pytest.fixture
def paths(tmp_path: Path) -> NodePaths:
    p = NodePaths.under_root(tmp_path)
    boot = p.boot_id_file
    boot.parent.mkdir(parents=True)
    boot.write_text("boot-1\n")
    return p


@pytest.fixture
def store(paths: NodePaths) -> StateStore:
    return StateStore(paths)


def full_state() -> State:
    return State(
        selected_config="all-balanced",
        last_run=LastRun(
            config="all-balanced",
            started_at="2026-01-01T00:00:00Z",
            finished_at="2026-01-01T00:00:09Z",
            result="ok",
            exit_code=0,
            gpus={"0": {"result": "ok", "changed": True}, "1": {"result": "unchanged"}},
            message="applied",
        ),
        journal=Journal("all-balanced", "stop-clients", "2026-01-01T00:00:01Z", 42, ("a.service", "b.service"), "boot-1"),
        reboot_guard=RebootMarker("all-balanced", "2026-01-01T00:00:02Z", "boot-0", (0, 3)),
        integrations={"slurm": {"written": "/etc/slurm/gres.conf"}},
    )


def test_round_trip_through_disk(store: StateStore) -> None:
    s = full_state()
    store.save(s)
    loaded = store.load()
    assert loaded.problem is None
    assert loaded.state == s


def test_round_trip_pure() -> None:
    s = full_state()
    assert state_from_json(state_to_json(s)) == s
    doc = json.loads(state_to_json(s))
    assert doc["version"] == 1
    assert doc["journal"]["stopped_units"] == ["a.service", "b.service"]


def test_missing_file_is_empty_state_without_problem(store: StateStore) -> None:
    r = store.load()
    assert r.state == State()
    assert r.problem is None


def test_state_dir_created_0700_even_with_open_umask(store: StateStore, paths: NodePaths) -> None:
    old = os.umask(0)
    try:
        store.save(State(selected_config="x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(paths.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.state_file.stat().st_mode) == 0o600


def test_loose_state_dir_is_tightened_with_warning(store: StateStore, paths: NodePaths, caplog) -> None:
    paths.state_dir.mkdir(parents=True)
    os.chmod(paths.state_dir, 0o755)
    store.save(State())
    assert stat.S_IMODE(paths.state_dir.stat().st_mode) == 0o700
    assert any("tightening" in r.getMessage() for r in caplog.records)


def test_crash_before_rename_keeps_old_file(store: StateStore, paths: NodePaths, monkeypatch) -> None:
    store.save(State(selected_config="old"))

    def boom(src, dst):
        raise OSError(5, "simulated crash before rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.save(State(selected_config="new"))
    monkeypatch.undo()
    r = store.load()
    assert r.problem is None
    assert r.state.selected_config == "old"
    # the failed write cleaned up after itself
    assert sorted(p.name for p in paths.state_dir.iterdir()) == [".lock", "state.json"]


def test_no_temp_files_after_success(store: StateStore, paths: NodePaths) -> None:
    for i in range(5):
        store.save(State(selected_config=f"c{i}"))
    assert sorted(p.name for p in paths.state_dir.iterdir()) == [".lock", "state.json"]


def test_temp_file_left_by_killed_writer_is_cleaned_on_next_save(store: StateStore, paths: NodePaths) -> None:
    store.save(State())
    stale = paths.state_dir / ".state.json.999999.0.tmp"
    stale.write_text("{half")
    store.save(State(selected_config="x"))
    assert not stale.exists()


@pytest.mark.parametrize(
    "content, expect",
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"version": 2}', "unsupported version 2"),
        ('{"selected_config": "x"}', "missing key 'version'"),
        ('{"version": 1, "selected_config": 7}', "state.selected_config: expected a string or null"),
        ('{"version": 1, "journal": {"config": "x", "phase": "p", "started_at": "t", "pid": "12"}}', "journal.pid: expected an integer"),
        ('{"version": 1, "journal": {"config": "x", "phase": "p", "started_at": "t", "pid": 1, "stopped_units": [1]}}', "journal.stopped_units[0]"),
        ('{"version": 1, "last_run": {"config": "x", "started_at": "t", "result": "meh", "exit_code": 0}}', "last_run.result"),
        ('{"version": 1, "reboot_guard": {"config": "x", "armed_at": "t", "boot_id": "b", "gpus": [true]}}', "reboot_guard.gpus[0]"),
        ('{"version": true}', "got a boolean"),
    ],
)
def test_corrupt_file_is_moved_aside_and_reported(store: StateStore, paths: NodePaths, content: str, expect: str) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.state_file.write_text(content)
    r = store.load()
    assert r.state == State()
    assert r.problem is not None and expect in r.problem
    assert str(paths.state_file) in r.problem
    assert not paths.state_file.exists()
    aside = [p for p in paths.state_dir.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_text() == content  # kept for the operator to look at
    assert aside[0].name in r.problem
    # and the next run goes on normally
    store.save(State(selected_config="fresh"))
    assert store.load() == state_mod.LoadResult(State(selected_config="fresh"), None)


def test_unreadable_file_does_not_raise(store: StateStore, paths: NodePaths) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.state_file.mkdir()  # reading a directory fails with EISDIR, as root too
    r = store.load()
    assert r.state == State()
    assert r.problem is not None and "cannot read it" in r.problem


def test_permission_denied_is_reported_but_not_moved(store: StateStore, paths: NodePaths, monkeypatch) -> None:
    store.save(State(selected_config="x"))

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    # as a non-root `status` meets a 0600 root file (root itself is never denied)
    monkeypatch.setattr("migmanagerd.service.state.read_own_file", denied)
    r = store.load()
    monkeypatch.undo()
    assert r.state == State()
    assert r.problem is not None and "Permission denied" in r.problem
    assert store.load().state.selected_config == "x"  # still there, untouched


def test_non_utf8_file_is_reported(store: StateStore, paths: NodePaths) -> None:
    paths.state_dir.mkdir(parents=True)
    paths.state_file.write_bytes(b"\xff\xfe{")
    r = store.load()
    assert r.problem is not None
    assert not paths.state_file.exists()


def test_journal_lifecycle(store: StateStore) -> None:
    j = store.begin_journal("all-balanced", "hooks")
    assert j.config == "all-balanced" and j.phase == "hooks"
    assert j.pid == os.getpid() and j.boot_id == "boot-1"
    assert j.stopped_units == ()
    # persisted before anything is stopped
    assert store.load().state.journal == j

    store.record_stopped(["kubelet.service"])
    store.record_stopped(["dcgm-exporter.service", "nvidia-dcgm.service"])
    j = store.load().state.journal
    assert j is not None
    # restart order: last stopped first
    assert j.stopped_units == ("nvidia-dcgm.service", "dcgm-exporter.service", "kubelet.service")
    assert j.stop_order == ("kubelet.service", "dcgm-exporter.service", "nvidia-dcgm.service")

    store.set_phase("start-clients")
    store.record_started(["nvidia-dcgm.service"])
    j = store.load().state.journal
    assert j is not None and j.phase == "start-clients"
    assert j.stopped_units == ("dcgm-exporter.service", "kubelet.service")

    store.end_journal()
    assert store.load().state.journal is None


def test_record_stopped_twice_keeps_one_entry(store: StateStore) -> None:
    store.begin_journal("c", "stop-clients")
    store.record_stopped(["a.service"])
    store.record_stopped(["a.service"])
    assert store.load().state.journal.stopped_units == ("a.service",)


def test_begin_journal_carries_over_units_of_a_crashed_run(store: StateStore) -> None:
    store.begin_journal("c1", "stop-clients")
    store.record_stopped(["a.service", "b.service"])
    # crash: no end_journal(); the next run opens its own journal
    j = store.begin_journal("c2", "hooks")
    assert j.config == "c2"
    assert j.stopped_units == ("b.service", "a.service")


def test_record_stopped_without_journal_is_a_programming_error(store: StateStore) -> None:
    with pytest.raises(RuntimeError):
        store.record_stopped(["a.service"])


def test_record_run_sets_selected_only_on_success(store: StateStore) -> None:
    ok = LastRun("all-1g.5gb", "t0", "t1", "ok", 0, {"0": {"result": "ok"}}, "")
    store.record_run(ok)
    assert store.load().state.selected_config == "all-1g.5gb"
    failed = replace(ok, config="all-7g.40gb", result="failed", exit_code=1, message="GPU 0: in use")
    s = store.record_run(failed)
    assert s.selected_config == "all-1g.5gb"
    assert store.load().state.last_run == failed


def test_updates_keep_other_fields(store: StateStore) -> None:
    store.save(full_state())
    store.set_integration("cdi", {"refreshed": True})
    s = store.load().state
    assert s.integrations == {"slurm": {"written": "/etc/slurm/gres.conf"}, "cdi": {"refreshed": True}}
    assert s.reboot_guard == full_state().reboot_guard
    assert s.last_run == full_state().last_run


def test_set_integration_rejects_unserialisable_value_without_writing(store: StateStore) -> None:
    store.save(State(selected_config="x"))
    with pytest.raises(TypeError):
        store.set_integration("bad", object())
    assert store.load().state == State(selected_config="x")


_WRITER = textwrap.dedent(
    """
    import sys
    from migmanagerd.service.paths import NodePaths
    from migmanagerd.service.state import StateStore, State, Journal
    store = StateStore(NodePaths.under_root(sys.argv[1]))
    i = 0
    while True:
        i += 1
        # a growing document, so a torn write would be visible as bad JSON
        units = tuple(f"unit-{k}.service" for k in range(i % 300))
        store.save(State(selected_config=f"c{i}", journal=Journal("c", "stop", "t", i, units, "b"),
                         integrations={"pad": "x" * (i % 5000)}))
    """
)


def test_kill_9_during_saves_never_leaves_unparsable_state(tmp_path: Path) -> None:
    rng = random.Random(1234)
    paths = NodePaths.under_root(tmp_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    seen_configs = set()
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], env=env)
        try:
            deadline = time.monotonic() + 30
            while not paths.state_file.exists():
                assert proc.poll() is None, "writer died on its own"
                assert time.monotonic() < deadline, "writer never wrote state.json"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        raw = paths.state_file.read_text()
        json.loads(raw)  # parses: never a torn file
        r = StateStore(paths).load()
        assert r.problem is None, r.problem
        assert r.state.selected_config and r.state.selected_config.startswith("c")
        seen_configs.add(r.state.selected_config)
    assert not [p for p in paths.state_dir.iterdir() if p.name.startswith("state.json.corrupt")]
