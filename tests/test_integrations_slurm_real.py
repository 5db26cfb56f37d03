"""The drain against a real Slurm 22.05 (Debian's slurmctld + slurmd), not a fake.

A one-node cluster runs from a temporary directory on private ports with
auth/none (so no munge key is needed); a real batch job holds the node while
SlurmDrain waits, times out, or resumes. Only State=, CPUAlloc= and Reason=
parsing and the update commands are exercised here: GPU gres need hardware.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from migmanagerd.errors import MigManagerError
from migmanagerd.integrations.drain import SlurmDrain
from migmanagerd.integrations.layout import RunSummary
from migmanagerd.integrations.scontrol import Scontrol
from migmanagerd.integrations.settings import DrainSettings, SlurmSettings

NODE = "mmgpu01"
PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm", "/usr/lib64/slurm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(d: Path, cluster: str, *, extra: str = "", node_extra: str = "") -> str:
    """A one-node slurm.conf with no munge (auth/none), state under ``d``."""
    return f"""\
ClusterName={cluster}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
{extra}NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=1 State=UNKNOWN{node_extra}
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _wait(what: str, predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [b for b in ("slurmctld", "slurmd", "scontrol", "sbatch", "scancel") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages slurmctld, slurmd, slurm-client)")
    if os.geteuid() != 0:
        pytest.skip("needs root: slurmd launches the test job")
    if not any(Path(d, "auth_none.so").exists() for d in PLUGIN_DIRS):
        pytest.skip("needs Slurm's auth/none plugin (Slurm 22.05 as in Debian 12)")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    conf = d / "slurm.conf"
    conf.write_text(_slurm_conf(d, "migmanagerd-test", extra=(
        f"SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n"
        "SelectTypeParameters=CR_Core\nSchedulerType=sched/builtin\nJobAcctGatherType=jobacct_gather/none\n"
    )))
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    procs = [
        subprocess.Popen(["slurmctld", "-D", "-i"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT),
        subprocess.Popen(["slurmd", "-D", "-N", NODE], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT),
    ]
    scontrol = Scontrol("scontrol", timeout_s=20)
    try:
        def idle():
            try:
                st = scontrol.show_node(NODE)
            except MigManagerError:  # not registered yet
                return False
            return st.base_state == "IDLE" and not st.flags
        _wait("the test node to register", idle)
        yield scontrol
    finally:
        subprocess.run(["scancel", "--full", "-w", NODE], capture_output=True, timeout=20)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf


def _submit(seconds: int) -> str:
    out = subprocess.run(["sbatch", "--parsable", "-w", NODE, "-o", "/dev/null", "--wrap", f"sleep {seconds}"],
                         capture_output=True, text=True, timeout=20, check=True)
    return out.stdout.strip().split(";")[0]


def _drain(scontrol: Scontrol, timeout_s: int) -> SlurmDrain:
    settings = SlurmSettings(enabled=True, node_name=NODE,
                             drain=DrainSettings(enabled=True, reason="migmanagerd test", timeout_s=timeout_s, poll_s=1))
    return SlurmDrain(settings, scontrol)


def test_waits_for_a_real_job_then_resumes(cluster):
    _submit(3)
    _wait("the job to start", lambda: cluster.show_node(NODE).busy)
    drain = _drain(cluster, timeout_s=60)
    assert drain.before_change("all-1g.5gb") is True
    status = cluster.show_node(NODE)
    assert status.drained and not status.busy
    assert status.reason == "migmanagerd test (config all-1g.5gb)"
    assert drain.report["wait"] == "idle" and drain.report["waited_s"] > 0
    assert drain.after_change(RunSummary("all-1g.5gb", True, "ok", 1.0)) == {"node": "resumed"}
    assert not cluster.show_node(NODE).drained


def test_job_that_outlives_the_timeout_leaves_the_node_drained(cluster):
    job = _submit(600)
    try:
        _wait("the job to start", lambda: cluster.show_node(NODE).busy)
        drain = _drain(cluster, timeout_s=2)
        assert drain.before_change("all-1g.5gb") is False
        status = cluster.show_node(NODE)
        assert status.drained and status.busy
        assert status.reason.startswith("migmanagerd test (config all-1g.5gb): timed out after 2s")
        kept = drain.after_change(RunSummary("all-1g.5gb", False, "skipped", 0.0))
        assert kept == {"node": "left-drained", "reason": status.reason}
        assert cluster.show_node(NODE).drained
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=20)
        _wait("the job to end", lambda: not cluster.show_node(NODE).busy)
        subprocess.run(["scontrol", "update", f"NodeName={NODE}", "State=RESUME"], capture_output=True, timeout=20)


# --- the generated gres.conf and Gres= fragment, as real Slurm reads them -----------------

GRES_SCRIPT = """\
set -e
mkdir -p {d}/olddev
mount --bind /dev {d}/olddev
mount -t tmpfs tmpfs /dev
for f in null zero random urandom; do touch /dev/$f; mount --bind {d}/olddev/$f /dev/$f; done
mkdir -p /dev/nvidia-caps
{mknods}
export SLURM_CONF={d}/slurm.conf
slurmctld -D -i >{d}/ctld.out 2>&1 & C=$!
slurmd -D -N {node} >{d}/slurmd.out 2>&1 & S=$!
trap 'kill $C $S; wait' EXIT
for i in $(seq 1 100); do
  scontrol -o show node {node} 2>/dev/null | grep -q 'State=IDLE ' && break
  sleep 0.2
done
scontrol -o show node {node}
for g in {requests}; do
  if sbatch --test-only --gres=$g --wrap true >/dev/null 2>&1; then echo "OK $g"; else echo "NO $g"; fi
done
"""


def test_generated_gres_files_are_accepted_by_real_slurm(tmp_path):
    from migmanagerd.integrations.gres import gres_devices
    from migmanagerd.integrations.layout import GpuLayout, MigDeviceInfo, NodeLayout
    from migmanagerd.integrations.slurm import write_gres_files

    missing = [b for b in ("slurmctld", "slurmd", "scontrol", "sbatch", "unshare") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages slurmctld, slurmd, slurm-client, util-linux)")
    if os.geteuid() != 0:
        pytest.skip("needs root: unshare --mount and mknod for stand-in GPU device nodes")
    if not any(Path(d, "auth_none.so").exists() for d in PLUGIN_DIRS):
        pytest.skip("needs Slurm's auth/none plugin (Slurm 22.05 as in Debian 12)")

    root = tmp_path / "root"
    caps = {"gpu0/mig/gi1": 12, "gpu0/mig/gi1/ci0": 13, "gpu0/mig/gi9": 84, "gpu0/mig/gi9/ci0": 85,
            "gpu0/mig/gi10": 93, "gpu0/mig/gi10/ci0": 94}
    for rel, minor in caps.items():
        p = root / "proc/driver/nvidia/capabilities" / rel / "access"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"DeviceFileMinor: {minor}\nDeviceFileMode: 292\n")
    layout = NodeLayout((
        GpuLayout(0, "NVIDIA A100-SXM4-40GB", "GPU-a", True, (
            MigDeviceInfo(0, 1, 0, "3g.20gb", "MIG-1"), MigDeviceInfo(0, 9, 0, "1g.5gb+me", "MIG-9"),
            MigDeviceInfo(0, 10, 0, "1g.5gb", "MIG-10"))),
        GpuLayout(1, "NVIDIA A100-SXM4-40GB", "GPU-b", False),
    ))
    d = tmp_path / "slurm"
    d.mkdir()
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    settings = SlurmSettings(enabled=True, node_name=NODE, gres_file=str(d / "gres.conf"),
                             nodename_file=str(d / "gres.fragment"), mig_files="parent-and-caps", root=str(root))
    written = write_gres_files(settings, layout, "mixed")
    assert written["gres"] == "gpu:3g.20gb:1,gpu:1g.5gb+me:1,gpu:1g.5gb:1,gpu:a100-sxm4-40gb:1"
    fragment = (d / "gres.fragment").read_text().strip()
    (d / "slurm.conf").write_text(_slurm_conf(d, "migmanagerd-gres", extra="GresTypes=gpu\n", node_extra=f" {fragment}"))
    # stand-in device nodes (major numbers are arbitrary: slurmd only checks they are devices)
    files = sorted({f for dev in gres_devices(layout, root=root, mig_files="parent-and-caps") for f in dev.files})
    minor = {f: re.search(r"(\d+)$", f).group(1) for f in files}
    mknods = "\n".join(f"mknod {f} c {238 if 'caps' in f else 195} {minor[f]}" for f in files)
    requests = ["gpu:3g.20gb:1", "gpu:1g.5gb+me:1", "gpu:1g.5gb:1", "gpu:a100-sxm4-40gb:1", "gpu:1g.5gb:2"]
    script = GRES_SCRIPT.format(d=d, mknods=mknods, node=NODE, requests=" ".join(requests))
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + (d / "slurmd.out").read_text()
    assert f"Gres={written['gres']} " in out.stdout, out.stdout + (d / "slurmd.out").read_text()
    assert "State=IDLE " in out.stdout
    results = dict(line.split(" ", 1)[::-1] for line in out.stdout.splitlines() if line[:3] in ("OK ", "NO "))
    assert results == {"gpu:3g.20gb:1": "OK", "gpu:1g.5gb+me:1": "OK", "gpu:1g.5gb:1": "OK",
                       "gpu:a100-sxm4-40gb:1": "OK", "gpu:1g.5gb:2": "NO"}
