"""Shared helpers for tests/test_e2e_unit.py and tests/test_fault_matrix.py.

A *node* here is a throwaway root (``MIGMANAGERD_ROOT``) holding
``etc/nvidia-mig-manager/{config,clients,hooks}.yaml``, the state directory,
a boot id file and a simulated GPU node (``MIGMANAGERD_SIM_STATE``), plus GPU
client units (real ``/bin/sleep`` services) in the test's real systemd user
manager (the ``systemd_user`` fixture).

Run as a script, this module is the service with a test-only kill switch::

    python tests/e2e_support.py service [migmanagerd service options]

``MIGMANAGERD_TEST_KILL=POINT:N`` makes the process SIGKILL itself at the N-th
occurrence of POINT, where POINT is a backend operation kind (``set_mode``,
``reset``, ``create_gi``, ``create_ci``, ``destroy_ci``, ``destroy_gi``: killed
right AFTER the operation took effect, before anything else records it), or
``stop:UNIT`` / ``start:UNIT`` (killed right after systemd finished that job).
``MIGMANAGERD_TEST_PIDFILE`` gets the process id first, so a client unit's
ExecStop can kill the service too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from apply_helpers import backend_env

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SERVICE = "nvidia-mig-manager.service"
TARGET = "nvidia-gpu-reset.target"
SIM_NODE = "2xA100-SXM4-40GB"
OP_KINDS = ("set_mode", "reset", "create_gi", "create_ci", "destroy_ci", "destroy_gi")
KILL_ENV = "MIGMANAGERD_TEST_KILL"
PIDFILE_ENV = "MIGMANAGERD_TEST_PIDFILE"
# every bounded wait in these tests
WAIT_S = 30.0

# A100-SXM4-40GB: 7 compute / 8 memory slices, at most 7 x 1g.5gb.
CONFIG_YAML = textwrap.dedent(
    """\
    version: v1
    mig-configs:
      all-disabled:
        - devices: all
          mig-enabled: false
      all-enabled:
        - devices: all
          mig-enabled: true
          mig-devices: {}
      all-balanced:
        - devices: all
          mig-enabled: true
          mig-devices:
            "1g.5gb": 2
            "2g.10gb": 1
            "3g.20gb": 1
      all-1g.5gb:
        - devices: all
          mig-enabled: true
          mig-devices:
            "1g.5gb": 7
      all-3g.20gb:
        - devices: all
          mig-enabled: true
          mig-devices:
            "3g.20gb": 2
      too-big:
        - devices: all
          mig-enabled: true
          mig-devices:
            "1g.5gb": 8
    """
)

# what `sim show --json` must list per GPU for each config (profiles, sorted)
EXPECTED_PROFILES = {
    "all-disabled": [],
    "all-enabled": [],
    "all-balanced": ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"],
    "all-1g.5gb": ["1g.5gb"] * 7,
    "all-3g.20gb": ["3g.20gb", "3g.20gb"],
}


def client_unit(name: str, *, after_target: bool, flags: Path | None = None) -> str:
    """A long-running GPU client as a node would have it: WantedBy=
    default.target (the user manager's multi-user.target) and, for the
    DCGM/kubelet kind, ordered after nvidia-gpu-reset.target.

    With ``flags`` (a directory), files there switch faults on (see
    CLIENT_HOOK): ``<unit>.fail-start`` fails its start (ExecStartPre),
    ``<unit>.fail-stop`` fails its ExecStop, ``<unit>.kill-service`` makes its
    ExecStop SIGKILL the service (pid in ``flags/service.pid``)."""
    unit = f"[Unit]\nDescription=test GPU client {name}\n"
    if after_target:
        unit += f"Wants={TARGET}\nAfter={TARGET}\n"
    unit += "[Service]\nExecStart=/bin/sleep 1000\n"
    if flags is not None:
        unit += f"ExecStartPre=/bin/sh {flags}/client-hook.sh start %n\n"
        unit += f"ExecStop=/bin/sh {flags}/client-hook.sh stop %n\n"
    unit += "[Install]\nWantedBy=default.target\n"
    return unit


CLIENT_HOOK = """\
# $1: start|stop, $2: unit; flag files beside this script switch faults on
d=$(dirname "$0")
if [ "$1" = start ] && [ -e "$d/$2.fail-start" ]; then echo "injected start failure" >&2; exit 1; fi
if [ "$1" = stop ] && [ -e "$d/$2.kill-service" ]; then kill -9 "$(cat "$d/service.pid")"; fi
if [ "$1" = stop ] && [ -e "$d/$2.fail-stop" ]; then echo "injected ExecStop failure" >&2; exit 1; fi
if [ "$1" = stop ] && [ -e "$d/$2.slow-stop" ]; then sleep 3; fi
exit 0
"""


def write_client_hook(flags: Path) -> None:
    flags.mkdir(parents=True, exist_ok=True)
    (flags / "client-hook.sh").write_text(CLIENT_HOOK)


@dataclass
class Node:
    """A throwaway node root with its files, and the env the service needs."""

    root: Path
    bus_env: dict[str, str]
    unit_dir: Path
    clients: tuple[str, ...] = ()
    hooks: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "nvidia-mig-manager"

    @property
    def sim_state(self) -> Path:
        return self.root / "sim.json"

    @property
    def state_file(self) -> Path:
        return self.root / "var" / "lib" / "nvidia-mig-manager" / "state.json"

    @property
    def boot_id_file(self) -> Path:
        return self.root / "boot_id"

    @property
    def dropin(self) -> Path:
        # the selector lives where the real manager reads it
        return self.unit_dir / f"{SERVICE}.d" / "override.conf"

    @property
    def env(self) -> dict[str, str]:
        return {
            **self.bus_env,
            "PYTHONPATH": str(REPO),
            **backend_env(),  # sim, or NVML through the stand-in (apply_helpers.BACKEND)
            "MIGMANAGERD_SIM_STATE": str(self.sim_state),
            "MIGMANAGERD_ROOT": str(self.root),
            "MIGMANAGERD_DROPIN": str(self.dropin),
            "MIGMANAGERD_BOOT_ID_FILE": str(self.boot_id_file),
        }

    def setup(self, *, no_reset: bool = False) -> Node:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for d in (self.root / "etc", self.etc):
            d.mkdir(mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)
        self.write_etc("config.yaml", CONFIG_YAML)
        self.write_clients(self.clients)
        self.write_hooks(self.hooks)
        self.new_boot()
        argv = ["sim", "init", "--node", SIM_NODE, "--force"] + (["--no-reset"] if no_reset else [])
        self.cli(*argv)
        return self

    def write_etc(self, name: str, text: str) -> Path:
        path = self.etc / name
        path.write_text(text)
        os.chmod(path, 0o644)
        return path

    def write_clients(self, units) -> None:
        self.clients = tuple(units)
        body = "version: v1\ndiscover: refuse\ngroups:\n"
        if self.clients:
            body += "  - name: clients\n    stop-before: [mode, config]\n    units:\n"
            body += "".join(f"      - {u}\n" for u in self.clients)
        else:
            body = "version: v1\ndiscover: refuse\n"
        self.write_etc("clients.yaml", body)

    def write_hooks(self, hooks: dict[str, list[dict]]) -> None:
        self.hooks = dict(hooks)
        self.write_etc("hooks.yaml", "version: v1\nhooks: " + json.dumps(self.hooks) + "\n")

    def new_boot(self) -> str:
        """A new kernel boot id (what a reboot gives the reboot guard)."""
        import uuid

        boot = str(uuid.uuid4())
        self.boot_id_file.write_text(boot + "\n")
        return boot

    # --- reading the node -------------------------------------------------

    def cli(self, *argv: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [PYTHON, "-m", "migmanagerd", *argv],
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True, text=True, timeout=WAIT_S,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"migmanagerd {' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        return proc

    def sim_show(self) -> dict:
        return json.loads(self.cli("sim", "show", "--json").stdout)

    def ops(self) -> dict[str, int]:
        return dict(self.sim_show()["ops"])

    def profiles(self) -> list[list[str]]:
        return [sorted(i["profile"] for i in g["instances"]) for g in self.sim_show()["gpus"]]

    def holds(self, config: str) -> bool:
        show = self.sim_show()
        want_mig = config != "all-disabled"
        return all(
            g["mig_enabled"] == want_mig and g["mig_pending"] == want_mig
            and sorted(i["profile"] for i in g["instances"]) == EXPECTED_PROFILES[config]
            for g in show["gpus"]
        )

    def state(self) -> dict:
        """state.json, parsed (raises if it does not parse)."""
        return json.loads(self.state_file.read_text())


def service_argv() -> list[str]:
    """The service as this checkout runs it, with the test kill switch."""
    return [PYTHON, str(Path(__file__).resolve()), "service"]


# --- the kill switch (runs inside the service process) ---------------------------


def _install_kill_switch() -> None:
    spec = os.environ.get(KILL_ENV, "")
    pidfile = os.environ.get(PIDFILE_ENV)
    if pidfile:
        Path(pidfile).write_text(f"{os.getpid()}\n")
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    nth_i = int(nth)
    seen = {"n": 0}

    def maybe_die(what: str) -> None:
        if what != point:
            return
        seen["n"] += 1
        if seen["n"] == nth_i:
            os.kill(os.getpid(), signal.SIGKILL)

    from migmanagerd.gpu import sim

    real_change = sim.SimBackend._change

    def change(self, op, *args, **kwargs):
        result = real_change(self, op, *args, **kwargs)
        maybe_die(op)
        return result

    sim.SimBackend._change = change

    from migmanagerd.clients import systemd as sd

    real_stop, real_start = sd.SystemdManager.stop, sd.SystemdManager.start
    real_enqueue = sd.SystemdManager.enqueue_start

    def stop(self, name, timeout_s):
        r = real_stop(self, name, timeout_s)
        maybe_die(f"stop:{name}")
        return r

    def start(self, name, timeout_s):
        r = real_start(self, name, timeout_s)
        maybe_die(f"start:{name}")
        return r

    def enqueue_start(self, name):
        r = real_enqueue(self, name)
        maybe_die(f"start:{name}")
        return r

    sd.SystemdManager.stop, sd.SystemdManager.start = stop, start
    sd.SystemdManager.enqueue_start = enqueue_start


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    _install_kill_switch()
    from migmanagerd.cli.main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
