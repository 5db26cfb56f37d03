"""The boot-time run under a failure, or a SIGKILL, at every step.

For every step of a run that changes the node — each hook, each client stop
and start, each kind of backend operation (its first and a later
occurrence), the GPU reset — one case injects a failure and another kills the
service process (SIGKILL) right there. After each:

* every GPU client that was active before is active again, at once or after
  the next run (the state journal must say which ones the next run owes);
* state.json parses;
* the next run, with the fault gone, converges: exit 0 and the simulated node
  holds the selected config.

Clients are real units in a real systemd user manager (tests/systemd_harness.py);
the GPUs are the simulator. Failure cases run the service in this process
(ServiceRun); kill cases run it as a child process (tests/e2e_support.py
carries the test-only kill switch) and expect it to die of SIGKILL.
docs/fault-matrix.md describes the matrix and records its size and result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from apply_helpers import use_backend_env
from e2e_support import (
    KILL_ENV,
    PIDFILE_ENV,
    REPO,
    TARGET,
    WAIT_S,
    Node,
    client_unit,
    service_argv,
    write_client_hook,
)
from systemd_harness import UnitSandbox

DCGM = "fm-dcgm.service"  # After=nvidia-gpu-reset.target, enabled: its start is only queued
MONITOR = "fm-monitor.service"  # not ordered after the target, NOT enabled: started by hand
KUBELET = "fm-kubelet.service"  # After=nvidia-gpu-reset.target, enabled
CLIENTS = (DCGM, MONITOR, KUBELET)  # clients.yaml order = start order; stopped in reverse
HOOKS = ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit")

# scenario -> (config before, config selected)
SCENARIOS = {
    # MIG off -> on: both hooks, set_mode x2, one reset call, 8 x create_gi/create_ci
    "enable": (None, "all-balanced"),
    # balanced -> 7 x 1g.5gb: per GPU 2 destroy_ci/destroy_gi, 5 create_gi/create_ci
    "relayout": ("all-balanced", "all-1g.5gb"),
}


@dataclass(frozen=True)
class Case:
    scenario: str
    step: str  # hook:NAME | op:RULE | stop:UNIT | start:UNIT | execstop:UNIT
    how: str  # "fail" or "kill"
    backend: str = "sim"  # "nvml": the real NVML backend through the NVML stand-in

    @property
    def id(self) -> str:
        tail = "" if self.backend == "sim" else f"-{self.backend}"
        return f"{self.how}-{self.scenario}-{self.step}{tail}"


def _cases() -> list[Case]:
    steps: list[tuple[str, str]] = []
    for h in HOOKS:
        steps.append(("enable", f"hook:{h}"))
    for h in ("apply-start", "pre-apply-config", "apply-exit"):
        steps.append(("relayout", f"hook:{h}"))
    for u in CLIENTS:
        steps.append(("enable", f"stop:{u}"))
        steps.append(("enable", f"start:{u}"))
    # the stops before a config change (no mode change) are their own phase
    steps.append(("relayout", f"stop:{MONITOR}"))
    steps.append(("relayout", f"start:{DCGM}"))
    steps.append(("relayout", f"execstop:{DCGM}"))
    # backend operations: the first and a later occurrence of each kind
    for op in ("set_mode:1", "set_mode:2", "reset:1", "create_gi:1", "create_gi:6", "create_ci:1", "create_ci:8"):
        steps.append(("enable", f"op:{op}"))
    for op in ("destroy_ci:1", "destroy_ci:3", "destroy_gi:1", "destroy_gi:4", "create_gi:1", "create_gi:9",
               "create_ci:2", "create_ci:10"):
        steps.append(("relayout", f"op:{op}"))
    cases = [Case(sc, st, how) for sc, st in steps for how in ("fail", "kill")]
    # failure-only extras: one GPU's operation (the other GPU goes on), and a
    # failed rollback (GPU 0's undo cannot destroy what it created)
    cases.append(Case("relayout", "op:create_gi@1:2", "fail"))
    cases.append(Case("relayout", "op:create_gi@0:2,destroy_ci@0:3", "fail"))
    # the disk refuses the journal write before the 2nd client stop (ENOSPC)
    cases.append(Case("enable", "journal:2", "fail"))
    # every backend case again with the real NVML backend through the stand-in
    # (the same simulated node and fault rules underneath); not a kill in the
    # reset, which the stand-in's nvidia-smi runs in a process of its own
    cases += [Case(c.scenario, c.step, c.how, "nvml") for c in cases
              if c.step.startswith("op:") and not (c.how == "kill" and "reset" in c.step)]
    return cases


CASES = _cases()
FAULT_CASES = [c for c in CASES if c.how == "fail"]
KILL_CASES = [c for c in CASES if c.how == "kill"]


# --- the environment, built once for the module ---------------------------------


class Env:
    def __init__(self, sandbox: UnitSandbox, root: Path) -> None:
        self.sd = sandbox
        self.flags = root / "flags"
        write_client_hook(self.flags)
        self.node = Node(root / "node", dict(sandbox.env), sandbox.unit_dir, clients=CLIENTS)
        self.node.setup()
        self.hooks_log = root / "hooks.log"
        sandbox.write_unit(TARGET, (REPO / "systemd" / TARGET).read_text())
        sandbox.write_unit(DCGM, client_unit(DCGM, after_target=True, flags=self.flags))
        sandbox.write_unit(MONITOR, client_unit(MONITOR, after_target=False, flags=self.flags))
        sandbox.write_unit(KUBELET, client_unit(KUBELET, after_target=True, flags=self.flags))
        sandbox.daemon_reload()
        sandbox.systemctl("enable", DCGM, KUBELET)
        self.snapshots: dict[str | None, Path] = {None: root / "sim-fresh.json"}
        shutil.copy(self.node.sim_state, self.snapshots[None])

    def write_hooks(self, failing: str | None = None, how: str = "fail") -> None:
        hooks = {}
        for h in HOOKS:
            script = f"echo {h} >> {self.hooks_log}"
            if h == failing:
                script += "; exit 1" if how == "fail" else "; kill -9 $PPID"
            hooks[h] = [{"command": "/bin/sh", "args": ["-c", script]}]
        self.node.write_hooks(hooks)

    def hooks_run(self) -> list[str]:
        return self.hooks_log.read_text().split() if self.hooks_log.exists() else []

    def prepare(self, scenario: str) -> None:
        """Node as the scenario starts: GPUs, no state.json, no flags, every client active."""
        before, _ = SCENARIOS[scenario]
        shutil.copy(self.snapshots[before], self.node.sim_state)
        self.node.state_file.unlink(missing_ok=True)
        for f in self.flags.iterdir():
            if f.name not in ("client-hook.sh",):
                f.unlink()
        self.hooks_log.unlink(missing_ok=True)
        self.write_hooks()
        self.sd.systemctl("reset-failed", *CLIENTS, check=False)
        self.sd.systemctl("start", *CLIENTS)
        for c in CLIENTS:
            self.sd.wait_for(c, "active", timeout=WAIT_S)

    def active(self, unit: str) -> bool:
        return self.sd.prop(unit, "ActiveState") == "active"

    def wait_active(self, unit: str) -> bool:
        try:
            self.sd.wait_for(unit, "active", timeout=10)
            return True
        except Exception:
            return False


@pytest.fixture(scope="module")
def env(systemd_user_session, tmp_path_factory):
    sandbox = UnitSandbox(systemd_user_session)
    try:
        e = Env(sandbox, tmp_path_factory.mktemp("fault-matrix"))
        yield e
    finally:
        sandbox.cleanup()


@pytest.fixture
def node_env(env, monkeypatch):
    for k, v in env.node.env.items():
        monkeypatch.setenv(k, v)
    for k in ("MIGMANAGERD_SIM_FAULTS", KILL_ENV, "MIG_PARTED_CONFIG_FILE", "MIG_PARTED_HOOKS_FILE", "NOTIFY_SOCKET"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(PIDFILE_ENV, str(env.flags / "service.pid"))
    return env


def run_service(config: str, monkeypatch, faults: str = ""):
    """One run of the service in this process."""
    from migmanagerd.gpu.sim_faults import PROCESS_FAULTS
    from migmanagerd.service.paths import NodePaths
    from migmanagerd.service.run import ServiceOptions, ServiceRun

    monkeypatch.setenv("MIG_PARTED_SELECTED_CONFIG", config)
    if faults:
        monkeypatch.setenv("MIGMANAGERD_SIM_FAULTS", faults)
    else:
        monkeypatch.delenv("MIGMANAGERD_SIM_FAULTS", raising=False)
    PROCESS_FAULTS.reset()
    try:
        return ServiceRun(ServiceOptions(hook_timeout_s=30), NodePaths.from_env()).run()
    finally:
        monkeypatch.delenv("MIGMANAGERD_SIM_FAULTS", raising=False)
        PROCESS_FAULTS.reset()


def run_service_child(config: str, kill: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "MIG_PARTED_SELECTED_CONFIG": config}
    if kill:
        env[KILL_ENV] = kill
    return subprocess.run(service_argv(), env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def snapshots(env):
    """The node with each scenario's starting config applied (fault-free), once."""
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.node.env.items():
            mp.setenv(k, v)
        for before, _ in SCENARIOS.values():
            if before is None or before in env.snapshots:
                continue
            shutil.copy(env.snapshots[None], env.node.sim_state)
            env.node.state_file.unlink(missing_ok=True)
            env.write_hooks()
            out = run_service(before, mp)
            assert out.exit_code == 0, out.message
            snap = env.node.sim_state.with_name(f"sim-{before}.json")
            shutil.copy(env.node.sim_state, snap)
            env.snapshots[before] = snap
    finally:
        mp.undo()
    return env.snapshots


# --- injecting one fault ------------------------------------------------------


def inject(env: Env, case: Case, monkeypatch) -> tuple[str, str]:
    """Switch the case's fault on. Returns (sim faults, kill switch)."""
    kind, _, what = case.step.partition(":")
    if kind == "hook":
        env.write_hooks(failing=what, how=case.how)
        return "", ""
    if kind == "op":
        if case.how == "fail":
            return what, ""
        return "", what
    if kind == "execstop":
        (env.flags / f"{what}.{'fail-stop' if case.how == 'fail' else 'kill-service'}").touch()
        return "", ""
    if case.how == "kill":
        return "", f"{case.step}:1"  # stop:UNIT:1 / start:UNIT:1
    from migmanagerd.clients.systemd import JobFailed, SystemdError, SystemdManager

    if kind == "journal":
        import errno

        from migmanagerd.service.state import StateStore

        real_record, calls = StateStore.record_stopped, []

        def record_stopped(self, units):
            calls.append(units)
            if len(calls) == int(what):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            return real_record(self, units)

        monkeypatch.setattr(StateStore, "record_stopped", record_stopped)
    elif kind == "stop":
        real_stop = SystemdManager.stop

        def stop(self, name, timeout_s):
            if name == what:
                raise JobFailed(name, "failed", "stop")
            return real_stop(self, name, timeout_s)

        monkeypatch.setattr(SystemdManager, "stop", stop)
    elif kind == "start" and what == MONITOR:
        # waited for: a real failing start (ExecStartPre)
        (env.flags / f"{what}.fail-start").touch()
    elif kind == "start":
        # only queued (ordered after the target): the StartUnit call itself fails
        real_enqueue = SystemdManager.enqueue_start

        def enqueue_start(self, name):
            if name == what:
                raise SystemdError(f"start unit {name}: injected D-Bus failure")
            return real_enqueue(self, name)

        monkeypatch.setattr(SystemdManager, "enqueue_start", enqueue_start)
    return "", ""


def expected_message(case: Case) -> str:
    kind, _, what = case.step.partition(":")
    if kind == "hook":
        return rf"hook {re.escape(what)}\[0\] \(/bin/sh\) failed with exit status 1"
    if kind == "op":
        # through NVML an injected fault is NVML_ERROR_UNKNOWN (a reset's: the tool's output)
        return "SIM_FAULT_INJECTED" if case.backend == "sim" else "UNKNOWN|SIM_FAULT_INJECTED"
    if kind == "journal":
        return "unexpected error: OSError: .*No space left on device"
    if kind == "stop":
        return rf"cannot stop GPU client {re.escape(what)}"
    if kind == "start":
        return rf"failed to start again: {re.escape(what)}"
    return ""


def check_after(env: Env, config: str, monkeypatch):
    """The common aftermath of every case."""
    # state.json parses (a run killed before its first write leaves none),
    # and says which clients the next run owes a start
    doc = json.loads(env.node.state_file.read_text()) if env.node.state_file.exists() else {}
    owed = set((doc.get("journal") or {}).get("stopped_units", []))
    for c in CLIENTS:
        assert c in owed or env.wait_active(c), f"{c} is neither active nor journaled: {doc.get('journal')}"
    # the next, fault-free run converges and brings every client back
    for f in env.flags.iterdir():
        if f.name.endswith((".fail-start", ".fail-stop", ".slow-stop", ".kill-service")):
            f.unlink()
    env.write_hooks()
    out = run_service(config, monkeypatch)
    assert out.exit_code == 0, out.message
    assert env.node.holds(config), env.node.sim_show()
    for c in CLIENTS:
        assert env.wait_active(c), f"{c} not active after the recovery run"
    doc = json.loads(env.node.state_file.read_text())
    assert doc["journal"] is None
    assert doc["last_run"]["result"] == "ok"
    return out


@pytest.mark.parametrize("case", FAULT_CASES, ids=lambda c: c.id)
def test_fault(case: Case, node_env: Env, snapshots, monkeypatch) -> None:
    env = node_env
    use_backend_env(monkeypatch, case.backend)
    _, config = SCENARIOS[case.scenario]
    env.prepare(case.scenario)
    dbus_faults = pytest.MonkeyPatch()
    try:
        faults, _ = inject(env, case, dbus_faults)
        out = run_service(config, monkeypatch, faults)
    finally:
        dbus_faults.undo()
    kind, _, what = case.step.partition(":")
    if kind == "execstop":
        # a failing ExecStop still leaves the unit stopped: not the run's failure
        assert out.exit_code == 0, out.message
    else:
        assert out.exit_code == 1, out.message
        assert re.search(expected_message(case), out.message), out.message
    # apply-exit runs last, after a failure too, once apply-start has begun
    ran = env.hooks_run()
    assert ran[0] == "apply-start" and ran[-1] == "apply-exit" and ran.count("apply-exit") == 1, ran
    if "destroy_ci@0:3" in case.step:
        assert "rollback" in out.message, out.message
        doc = json.loads(env.node.state_file.read_text())
        assert doc["last_run"]["gpus"]["0"]["status"] == "rollback-failed"
    check_after(env, config, monkeypatch)


@pytest.mark.parametrize("case", KILL_CASES, ids=lambda c: c.id)
def test_kill(case: Case, node_env: Env, snapshots, monkeypatch) -> None:
    env = node_env
    use_backend_env(monkeypatch, case.backend)
    _, config = SCENARIOS[case.scenario]
    env.prepare(case.scenario)
    _, kill = inject(env, case, None)
    proc = run_service_child(config, kill)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}, not killed: {proc.stderr[-2000:]}"
    kind, _, what = case.step.partition(":")
    layout_done = kind == "start" or case.step == "hook:apply-exit"
    if layout_done:
        # killed after the GPUs were done: nothing but the owed restarts is left
        assert env.node.holds(config)
    out = check_after(env, config, monkeypatch)
    if layout_done:
        assert out.message.endswith("nothing to do"), out.message


def test_matrix_size_is_documented() -> None:
    doc = (REPO / "docs" / "fault-matrix.md").read_text()
    line = f"{len(FAULT_CASES)} fault cases, {len(KILL_CASES)} kill cases"
    assert line in doc, f"docs/fault-matrix.md must say: {line}"


def test_second_run_waits_for_the_first_and_leaves_its_clients_alone(node_env: Env, snapshots, monkeypatch) -> None:
    """A `migmanagerd service` run by hand while the unit's run is half-way
    must not take the first run's journal as its own: it would start the
    clients again in the middle of the first run's GPU change."""
    import time

    from migmanagerd.service import run as service_run

    env = node_env
    _, config = SCENARIOS["enable"]
    env.prepare("enable")
    go = env.flags / "go"
    hooks = {h: [{"command": "/bin/sh", "args": ["-c", f"echo {h} >> {env.hooks_log}"]}] for h in HOOKS}
    # the first run holds at pre-apply-config (bounded: 30 s) until the test says go
    hooks["pre-apply-config"][0]["args"][1] += f"; i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"
    env.node.write_hooks(hooks)
    first = subprocess.Popen(
        service_argv(), env={**os.environ, "MIG_PARTED_SELECTED_CONFIG": config},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while "pre-apply-config" not in env.hooks_run() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert "pre-apply-config" in env.hooks_run(), "the first run never reached pre-apply-config"
        owed = json.loads(env.node.state_file.read_text())["journal"]["stopped_units"]
        assert set(owed) == set(CLIENTS)

        monkeypatch.setattr(service_run, "RUN_LOCK_WAIT_S", 0.5)
        out = run_service(config, monkeypatch)
        assert out.exit_code == 1 and "another migmanagerd run" in out.message, out.message
        assert all(not env.active(c) for c in CLIENTS)  # still stopped: the first run owns them
        assert json.loads(env.node.state_file.read_text())["journal"]["stopped_units"] == owed
    finally:
        go.touch()
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert env.node.holds(config)
    for c in CLIENTS:
        assert env.wait_active(c)


def test_clients_file_stop_timeout_is_honoured(node_env: Env, snapshots, monkeypatch) -> None:
    """clients.yaml's stop-timeout bounds each stop job (the service used to
    wait its built-in 90 s whatever the file said)."""
    env = node_env
    _, config = SCENARIOS["enable"]
    env.prepare("enable")
    clients_yaml = env.node.etc / "clients.yaml"
    original = clients_yaml.read_text()
    env.node.write_etc("clients.yaml", original.replace("discover: refuse\n", "discover: refuse\nstop-timeout: 1\n"))
    try:
        (env.flags / f"{MONITOR}.slow-stop").touch()
        out = run_service(config, monkeypatch)
    finally:
        env.node.write_etc("clients.yaml", original)
    assert out.exit_code == 1
    assert f"cannot stop GPU client {MONITOR}: unit {MONITOR}: stop job did not finish within 1s" in out.message
    check_after(env, config, monkeypatch)
