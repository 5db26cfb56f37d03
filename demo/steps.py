"""The walk-through: six steps an operator would take on a node.

Each step prints a header, the commands it runs with their output indented
under them, and one result line: ``RESULT step N: OK - …`` or
``RESULT step N: FAILED - <reason>``. The demo exits 0 only when every step
came out as expected.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn

from demo.node import (
    CLIENTS,
    GPU_HOLDER,
    SERVICE,
    SIM_LATENCY,
    SIM_NODE,
    TARGET,
    UNFIT_CONFIG,
    DemoNode,
    missing_checkout_files,
)
from demo.usermanager import CGROUP_PREFIX, ManagerError, UserManager, clean_environ, missing_requirement

STEPS = 6
CLI_TIMEOUT_S = 60.0
UNIT_TIMEOUT_S = 90.0  # one start/restart of the unit (the sim applies in seconds)
INDENT = "    "


class StepFailed(Exception):
    """A step's outcome is not the expected one (the message says how)."""


class Interrupted(BaseException):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so everything is torn down."""


def out(text: str = "", indent: str = "") -> None:
    for line in (text.splitlines() or [""]):
        print(f"{indent}{line}".rstrip())
    sys.stdout.flush()


@dataclass
class Demo:
    base: Path
    node: DemoNode
    mgr: UserManager
    results: list[tuple[int, str, bool, str]] = field(default_factory=list)

    # --- running things -----------------------------------------------------

    @property
    def cli_env(self) -> dict[str, str]:
        return {**clean_environ(), **self.mgr.env, **self.node.env}

    def migmanagerd(self, *argv: str, show: bool = True, expect: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        """Run this checkout's ``migmanagerd ARGV`` against the demo node, echoing it."""
        if show:
            out(f"$ migmanagerd {' '.join(argv)}", INDENT)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "migmanagerd", *argv], env=self.cli_env,
                capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"migmanagerd {' '.join(argv)} did not finish within {CLI_TIMEOUT_S:.0f}s") from None
        if show:
            out((proc.stdout + proc.stderr).rstrip("\n"), INDENT * 2)
            if proc.returncode:
                out(f"(exit status {proc.returncode})", INDENT * 2)
        if proc.returncode not in expect:
            raise StepFailed(
                f"migmanagerd {' '.join(argv)} exited {proc.returncode} (expected {'/'.join(map(str, expect))}): "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}"
            )
        return proc

    def systemctl(self, *args: str, show: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        if show:
            out(f"$ systemctl {' '.join(args)}", INDENT)
        proc = self.mgr.systemctl(*args, timeout=timeout)
        if show and (proc.stdout.strip() or proc.stderr.strip()):
            out((proc.stdout + proc.stderr).rstrip("\n"), INDENT * 2)
        return proc

    def run_unit(self, verb: str, *units: str) -> tuple[int, list[str]]:
        """``systemctl VERB UNITS`` (blocking, as an operator types it) while
        polling the unit's StatusText: returns systemctl's exit status and
        every distinct StatusText seen meanwhile (the progress)."""
        argv = ["systemctl", "--user", verb, *units]
        out(f"$ systemctl {verb} {' '.join(units)}", INDENT)
        seen: list[str] = []
        # the text the previous run left; progress starts when it changes
        initial = self.mgr.prop(SERVICE, "StatusText")
        moved = False
        proc = subprocess.Popen(argv, env={**clean_environ(), **self.mgr.env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + UNIT_TIMEOUT_S
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise StepFailed(f"systemctl {verb} {' '.join(units)} did not return within {UNIT_TIMEOUT_S:.0f}s")
                text = self.mgr.prop(SERVICE, "StatusText")
                moved = moved or text != initial
                if moved and text and (not seen or seen[-1] != text):
                    seen.append(text)
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            output = proc.communicate()[0]
        text = self.mgr.prop(SERVICE, "StatusText")
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if output.strip():
            out(output.rstrip("\n"), INDENT * 2)
        out(f"(exit status {proc.returncode})", INDENT * 2)
        if seen:
            out("StatusText while it ran (what `systemctl status` shows as Status:):", INDENT * 2)
            for s in seen:
                out(f'- "{s}"', INDENT * 3)
        return proc.returncode, seen

    # --- what a user looks at -------------------------------------------------

    def client_pids(self) -> dict[str, int]:
        return {c: self.mgr.main_pid(c) for c in CLIENTS}

    def show_pids(self, label: str, pids: dict[str, int], before: dict[str, int] | None = None) -> None:
        out(f"GPU client MainPIDs {label}:", INDENT)
        for unit, pid in pids.items():
            note = ""
            if before is not None:
                note = "  (same process)" if before.get(unit) == pid else f"  (was {before.get(unit)}: restarted)"
            out(f"{unit:<24} {pid or '-'}{note}", INDENT * 2)

    def wait_clients(self) -> dict[str, int]:
        """Clients ordered after the target were only queued by the unit; wait
        (bounded) until all are running again."""
        for c in CLIENTS:
            state = self.mgr.wait_for(c, ("active", "failed"), timeout=30)
            if state != "active":
                raise StepFailed(f"GPU client {c} is '{state}', not active, after the unit finished")
        return self.client_pids()

    def unit_status(self) -> dict[str, str]:
        props = self.mgr.props(SERVICE, "ActiveState", "SubState", "Result", "ExecMainStatus", "StatusText")
        out("$ systemctl status nvidia-mig-manager   (excerpt)", INDENT)
        text = self.mgr.systemctl("status", "-n0", "--no-pager", SERVICE).stdout
        keep = [
            line for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith(("Docs:", "CPU:", "file:", "man:"))
        ]
        out("\n".join(keep), INDENT * 2)
        return props

    def status(self) -> None:
        self.migmanagerd("status")

    def journal_since(self, offset: int, limit: int = 30) -> int:
        lines, end = self.node.read_log(self.node.service_log, offset)
        if lines:
            out(f"journal of {SERVICE} (the unit's output; no journald in the demo):", INDENT)
            shown = lines if len(lines) <= limit else lines[: limit // 2] + [f"... {len(lines) - limit} more ..."] + lines[-limit // 2:]
            out("\n".join(shown), INDENT * 2)
        return end

    def ops(self) -> dict[str, int]:
        return dict(json.loads(self.migmanagerd("sim", "show", "--json", show=False).stdout)["ops"])

    def sim_table(self) -> None:
        self.migmanagerd("sim", "show")

    def holds(self, per_gpu: list[str]) -> bool:
        """Every GPU has MIG on (current and pending) and exactly these profiles."""
        view = json.loads(self.migmanagerd("sim", "show", "--json", show=False).stdout)
        want = sorted(per_gpu)
        return all(
            g["mig_enabled"] and g["mig_pending"] and sorted(i["profile"] for i in g["instances"]) == want
            for g in view["gpus"]
        )

    def holders(self) -> set[int]:
        """The PIDs holding GPUs; a set of one when one process holds them all."""
        view = json.loads(self.migmanagerd("sim", "show", "--json", show=False).stdout)
        per_gpu = [frozenset(g["processes"]) for g in view["gpus"]]
        return set(per_gpu[0]) if len(set(per_gpu)) == 1 else {-1}

    def mig_off(self) -> bool:
        view = json.loads(self.migmanagerd("sim", "show", "--json", show=False).stdout)
        return all(not g["mig_enabled"] and not g["mig_pending"] and not g["instances"] for g in view["gpus"])

    # --- the steps ------------------------------------------------------------

    def step(self, n: int, title: str, fn: Callable[[], str]) -> None:
        out()
        out("=" * 78)
        out(f"STEP {n}/{STEPS}: {title}")
        out("=" * 78)
        t0 = time.monotonic()
        try:
            summary = fn()
            ok, detail = True, summary
        except (StepFailed, ManagerError) as exc:
            ok, detail = False, str(exc)
        took = time.monotonic() - t0
        self.results.append((n, title, ok, detail))
        out()
        out(f"RESULT step {n}: {'OK' if ok else 'FAILED'} - {detail} ({took:.1f}s)")

    def step1_all_disabled(self) -> str:
        out("The drop-in (config/override.conf) selects all-disabled; the node's GPUs", INDENT)
        out("come up with MIG off, so the unit has nothing to do and stops no client.", INDENT)
        self.systemctl("start", *CLIENTS)
        before = self.client_pids()
        self.show_pids("before", before)
        ops0 = self.ops()
        off = self.node.log_size(self.node.service_log)
        rc, _ = self.run_unit("start", SERVICE)
        self.journal_since(off)
        props = self.unit_status()
        self.status()
        after = self.client_pids()
        self.show_pids("after", after, before)
        if rc != 0 or props["Result"] != "success" or props["ActiveState"] != "active":
            raise StepFailed(f"unit not active/success: {props}")
        if "nothing to do" not in props["StatusText"]:
            raise StepFailed(f"expected 'nothing to do', StatusText is {props['StatusText']!r}")
        if after != before:
            raise StepFailed(f"clients were restarted although nothing changed: {before} -> {after}")
        if self.ops() != ops0 or not self.mig_off():
            raise StepFailed("the node changed although all-disabled was already applied")
        return f"'{props['StatusText']}', no GPU operation, clients untouched (same MainPIDs)"

    def step2_select_balanced(self) -> str:
        out("Select a MIG layout and re-run the unit: hooks run, the GPU clients are", INDENT)
        out("stopped, MIG is enabled (GPU reset), the instances are created, the", INDENT)
        out("clients are started again.", INDENT)
        self.migmanagerd("select", "all-balanced")
        out(f"$ cat {self.node.dropin_dir / 'override.conf'}", INDENT)
        out((self.node.dropin_dir / "override.conf").read_text().rstrip("\n"), INDENT * 2)
        before = self.client_pids()
        self.show_pids("before", before)
        out(f"{GPU_HOLDER} (pid {before[GPU_HOLDER]}) holds every GPU open, as DCGM does: a GPU", INDENT)
        out("reset under it would fail (IN_USE), so migmanagerd must stop it first:", INDENT)
        self.sim_table()
        if self.holders() != {before[GPU_HOLDER]}:
            raise StepFailed(f"expected {GPU_HOLDER} (pid {before[GPU_HOLDER]}) on every GPU, found {self.holders()}")
        off = self.node.log_size(self.node.service_log)
        hooks_off = self.node.log_size(self.node.hooks_log)
        rc, seen = self.run_unit("restart", SERVICE)
        self.journal_since(off)
        props = self.unit_status()
        after = self.wait_clients()
        self.show_pids("after", after, before)
        hook_lines, _ = self.node.read_log(self.node.hooks_log, hooks_off)
        out("hooks.yaml's hooks wrote:", INDENT)
        out("\n".join(hook_lines) or "(nothing)", INDENT * 2)
        self.status()
        if rc != 0 or props["Result"] != "success":
            raise StepFailed(f"unit failed: Result={props['Result']} ExecMainStatus={props['ExecMainStatus']} {props['StatusText']!r}")
        if not self.holds(["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]):
            raise StepFailed("the GPUs do not hold all-balanced")
        changed = [u for u in CLIENTS if before[u] == after[u]]
        if changed:
            raise StepFailed(f"clients not restarted (same MainPID): {', '.join(changed)}")
        if not any(s.startswith("stopping") for s in seen) or not any("restarting" in s for s in seen):
            raise StepFailed(f"progress not seen in StatusText: {seen}")
        if self.holders() != {after[GPU_HOLDER]}:
            raise StepFailed(f"the restarted {GPU_HOLDER} (pid {after[GPU_HOLDER]}) does not hold the GPUs: {self.holders()}")
        if len(hook_lines) != 2:
            raise StepFailed(f"expected the apply-start and apply-exit hook lines, got {hook_lines}")
        pids = ", ".join(f"{u.split('.')[0]} {before[u]}->{after[u]}" for u in CLIENTS)
        return f"all-balanced applied on 8 GPUs; clients restarted (MainPID {pids}); {len(seen)} progress updates"

    def step3_reboot(self) -> str:
        out("A reboot loses every MIG instance (the A100 keeps only the MIG mode).", INDENT)
        out("Shutdown stops everything; at boot the target pulls the unit in and the", INDENT)
        out("clients, ordered after the target, start only once it has finished.", INDENT)
        self.systemctl("stop", *CLIENTS, SERVICE)
        self.migmanagerd("sim", "reboot")
        boot = self.node.new_boot_id()
        out(f"(new boot id {boot})", INDENT)
        self.status()
        if self.holds(["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]):
            raise StepFailed("the simulated reboot did not clear the instances")
        off = self.node.log_size(self.node.service_log)
        rc, _ = self.run_unit("start", TARGET, *CLIENTS)
        self.journal_since(off)
        props = self.unit_status()
        after = self.wait_clients()
        self.show_pids("after boot", after)
        self.status()
        if rc != 0 or props["Result"] != "success":
            raise StepFailed(f"unit failed at boot: Result={props['Result']} {props['StatusText']!r}")
        if not self.holds(["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]):
            raise StepFailed("all-balanced was not re-applied at boot")
        done = int(self.mgr.prop(SERVICE, "ExecMainExitTimestampMonotonic") or 0)
        out("when each client started, relative to the end of the unit's run:", INDENT)
        early = []
        for c in CLIENTS:
            started = int(self.mgr.prop(c, "ExecMainStartTimestampMonotonic") or 0)
            out(f"{c:<24} started {'+' if started >= done else ''}{(started - done) / 1e6:.3f}s", INDENT * 2)
            if started < done:
                early.append(c)
        if early:
            raise StepFailed(f"clients started before the unit finished: {', '.join(early)}")
        return "all-balanced re-applied after the reboot; every client started after the unit finished"

    def step4_all_1g(self) -> str:
        out("Change to seven 1g.5gb devices per GPU. `plan` shows, per GPU, what is", INDENT)
        out("kept, destroyed and created, before anything is touched.", INDENT)
        self.migmanagerd("plan", "-c", "all-1g.5gb")
        ops0 = self.ops()
        self.migmanagerd("select", "all-1g.5gb")
        before = self.client_pids()
        off = self.node.log_size(self.node.service_log)
        rc, _ = self.run_unit("restart", SERVICE)
        self.journal_since(off, limit=16)
        props = self.unit_status()
        after = self.wait_clients()
        self.show_pids("after", after, before)
        ops1 = self.ops()
        out("GPU operations (`migmanagerd sim show --json` \"ops\"):", INDENT)
        out(f"{'op':<12}{'before':>8}{'after':>8}{'done':>8}", INDENT * 2)
        delta = {}
        for k in sorted(set(ops0) | set(ops1)):
            delta[k] = ops1.get(k, 0) - ops0.get(k, 0)
            out(f"{k:<12}{ops0.get(k, 0):>8}{ops1.get(k, 0):>8}{delta[k]:>8}", INDENT * 2)
        self.sim_table()
        if rc != 0 or props["Result"] != "success":
            raise StepFailed(f"unit failed: Result={props['Result']} {props['StatusText']!r}")
        if not self.holds(["1g.5gb"] * 7):
            raise StepFailed("the GPUs do not hold all-1g.5gb")
        if delta.get("set_mode", 0) or delta.get("reset", 0):
            raise StepFailed(f"MIG mode was already on, yet the unit changed it: {delta}")
        if not delta.get("create_gi") or not delta.get("destroy_gi"):
            raise StepFailed(f"expected instances destroyed and created: {delta}")
        done = ", ".join(f"{k}={v}" for k, v in delta.items() if v)
        return f"all-1g.5gb applied without a mode change or reset ({done})"

    def step5_unfit(self) -> str:
        out("A config that cannot fit an A100-40GB is added to config.yaml:", INDENT)
        out(self.node.append_unfit_config(), INDENT * 2)
        out("`select` checks the fit first and refuses it:", INDENT)
        self.migmanagerd("select", UNFIT_CONFIG, expect=(2,))
        out("Forced past that check (as a hand-edited drop-in would be), the unit", INDENT)
        out("refuses it before touching anything, and no client is stopped:", INDENT)
        self.migmanagerd("select", "--no-check", UNFIT_CONFIG)
        before = self.client_pids()
        self.show_pids("before", before)
        ops0 = self.ops()
        off = self.node.log_size(self.node.service_log)
        rc, _ = self.run_unit("restart", SERVICE)
        self.journal_since(off)
        props = self.unit_status()
        after = self.client_pids()
        self.show_pids("after", after, before)
        self.status()
        if rc == 0 or props["Result"] != "exit-code" or props["ExecMainStatus"] != "2":
            raise StepFailed(
                f"expected the unit to fail with exit status 2: systemctl exit {rc}, "
                f"Result={props['Result']} ExecMainStatus={props['ExecMainStatus']}"
            )
        if after != before:
            raise StepFailed(f"clients were stopped for a config that does not fit: {before} -> {after}")
        if self.ops() != ops0 or not self.holds(["1g.5gb"] * 7):
            raise StepFailed("the node changed although the config was refused")
        reason = props["StatusText"]
        if "fit" not in reason and "3g.20gb" not in reason:
            raise StepFailed(f"the status does not say why: {reason!r}")
        short = reason if len(reason) <= 150 else reason[:150] + "…"
        return f"refused with exit status 2, clients untouched (same MainPIDs), node unchanged; reason: {short}"

    def step6_on_demand(self) -> str:
        out("Two jobs ask for MIG devices; none of the free 1g.5gb fits them. A process", INDENT)
        out("runs on GPU 0's first 1g.5gb. `request` re-lays out one GPU at a time in", INDENT)
        out("the first allowed geometry that keeps every busy or leased instance where", INDENT)
        out("it is; it stops no client. binpack picks the busiest GPU, spread the emptiest.", INDENT)
        view = json.loads(self.migmanagerd("sim", "show", "--json", show=False).stdout)
        first = view["gpus"][0]["instances"][0]
        busy_uuid, busy_slot = first["uuid"], first["start"]
        job = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            self.migmanagerd("sim", "attach", "--device", busy_uuid, "--pid", str(job.pid))
            before = self.client_pids()
            ops0 = self.ops()
            self.migmanagerd("request", "--count", "2", "--memory", "8000", "--owner", "job-a", "--dry-run",
                             "--picture", "--no-color")
            a = json.loads(self.migmanagerd("request", "--count", "2", "--memory", "8000", "--owner", "job-a",
                                            "--json").stdout)
            b = json.loads(self.migmanagerd("request", "--count", "1", "--memory", "16000", "--owner", "job-b",
                                            "--policy", "spread", "--json").stdout)
            self.migmanagerd("status", "--picture", "--no-color")
            after = self.client_pids()
            self.show_pids("after", after, before)
            ops1 = self.ops()
            view = json.loads(self.migmanagerd("sim", "show", "--json", show=False).stdout)
            self.migmanagerd("release", "--owner", "job-a")
        finally:
            job.kill()
            job.wait(timeout=CLI_TIMEOUT_S)
        still = [i for i in view["gpus"][0]["instances"] if i["uuid"] == busy_uuid]
        if not still or still[0]["start"] != busy_slot:
            raise StepFailed(f"the busy instance {busy_uuid} moved or is gone")
        handed = [d["uuid"] for d in a["devices"] + b["devices"]]
        if len(handed) != 3 or len(set(handed)) != 3 or busy_uuid in handed:
            raise StepFailed(f"expected three distinct free devices, got {handed}")
        if a["changed_gpus"] != [0] or b["changed_gpus"] in ([], [0]):
            raise StepFailed(f"binpack should change GPU 0, spread another GPU: {a['changed_gpus']}, {b['changed_gpus']}")
        if after != before:
            raise StepFailed(f"GPU clients were restarted by a request: {before} -> {after}")
        if ops1.get("set_mode", 0) != ops0.get("set_mode", 0) or ops1.get("reset", 0) != ops0.get("reset", 0):
            raise StepFailed("a request switched a MIG mode or reset a GPU")
        got_a = " + ".join(d["profile"] for d in a["devices"])
        got_b = b["devices"][0]
        return (
            f"job-a (binpack) got {got_a} on GPU 0 beside the busy 1g.5gb (same slot, same UUID); "
            f"job-b (spread) a {got_b['profile']} on GPU {got_b['gpu']}; no client restarted, no mode change"
        )


KEEP_LOGS_ENV = "MIGMANAGERD_DEMO_KEEP_LOGS"


def _keep_logs(base: Path) -> None:
    """With MIGMANAGERD_DEMO_KEEP_LOGS=DIR, copy the logs there before the
    scratch directory is removed (for a failing run, e.g. from the test)."""
    dest = os.environ.get(KEEP_LOGS_ENV)
    if not dest:
        return
    for src in (base / "systemd.log", base / "dbus.log", base / "node" / "service.log", base / "node" / "hooks.log"):
        if src.exists():
            try:
                Path(dest).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, Path(dest) / src.name)
            except OSError as exc:
                out(f"could not keep {src}: {exc}")


def _raise_interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    missing = missing_requirement() or missing_checkout_files()
    if missing:
        print(f"migmanagerd demo: cannot run here: {missing}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    # Ctrl-C unwinds through the teardown even where the demo was started
    # with SIGINT ignored (a background job of a non-interactive shell)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    base = Path(tempfile.mkdtemp(prefix=CGROUP_PREFIX))
    mgr: UserManager | None = None
    demo: Demo | None = None
    code = 1
    try:
        out("migmanagerd demo: the oneshot nvidia-mig-manager.service under a real systemd")
        out(f"(a private user manager), on a simulated {SIM_NODE} node.")
        out(f"scratch directory: {base}")
        node = DemoNode(base, bus="")
        mgr = UserManager(base, node.unit_path)
        node.bus = mgr.bus  # the unit reaches systemd on the private bus
        node.build()
        out()
        out("Setting up:")
        mgr.start()
        out(f"- systemd --user (pid {mgr._proc.pid if mgr._proc else '?'}) in its own mount namespace, "
            f"bus {mgr.bus}", INDENT)
        demo = Demo(base, node, mgr)
        out(f"- node root (MIGMANAGERD_ROOT) {node.root}: config/ files, {SERVICE} and {TARGET}", INDENT)
        out(f"  from this checkout, drop-in demo.conf (ExecStart={sys.executable} -m migmanagerd service)", INDENT)
        out(f"- GPU clients (/bin/sleep): {', '.join(CLIENTS)}", INDENT)
        out("Commands are shown as an operator types them on a node; `systemctl` runs as", INDENT)
        out("`systemctl --user` against the private manager.", INDENT)
        demo.migmanagerd("sim", "init", "--node", SIM_NODE, "--latency", SIM_LATENCY, "--force")
        # as the package's postinst does: at boot the target pulls the unit in
        if demo.systemctl("enable", SERVICE).returncode != 0:
            raise StepFailed(f"systemctl enable {SERVICE} failed")
        out("(a user manager has no multi-user.target; what matters here is", INDENT * 2)
        out(f" {TARGET}.wants/, through which boot starts the unit)", INDENT * 2)
        demo.step(1, "boot with all-disabled: nothing to do", demo.step1_all_disabled)
        demo.step(2, "select all-balanced and restart the unit", demo.step2_select_balanced)
        demo.step(3, "a simulated reboot re-applies the layout", demo.step3_reboot)
        demo.step(4, "change to all-1g.5gb: plan first, then apply", demo.step4_all_1g)
        demo.step(5, "a config that does not fit is refused", demo.step5_unfit)
        demo.step(6, "MIG on demand: two requests on a partly busy node", demo.step6_on_demand)
        code = 0 if all(ok for _, _, ok, _ in demo.results) and len(demo.results) == STEPS else 1
    except KeyboardInterrupt:
        out()
        out("interrupted (Ctrl-C); cleaning up")
        code = 130
    except Interrupted as exc:
        out()
        out(f"interrupted ({exc}); cleaning up")
        code = 143
    except (StepFailed, ManagerError, OSError) as exc:
        out()
        out(f"demo set-up FAILED: {exc}")
        code = 1
    finally:
        # Ctrl-C during teardown must not leave the manager behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        left = mgr.stop() if mgr is not None else []
        _keep_logs(base)
        shutil.rmtree(base, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return _summary(demo, base, left, code, t0)


def _summary(demo: Demo | None, base: Path, left: list[str], code: int, t0: float) -> int:
    """Print each step's outcome and the teardown's; return the exit status."""
    out()
    out("=" * 78)
    out("SUMMARY")
    if demo is not None:
        for n, title, ok, _detail in demo.results:
            out(f"step {n}: {'OK    ' if ok else 'FAILED'} {title}")
    if base.exists():
        left.append(str(base))
    if left:
        out(f"cleanup FAILED: still there: {', '.join(left)}")
        code = code or 1
    else:
        out(f"cleanup: OK - user manager, its bus and the GPU clients stopped; {base} removed")
    verdict = "PASSED" if code == 0 else "INTERRUPTED" if code in (130, 143) else "FAILED"
    out(f"demo {verdict} in {time.monotonic() - t0:.1f}s (exit {code})")
    return code
