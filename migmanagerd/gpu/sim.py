"""A simulated node that obeys the rules NVIDIA hardware does.

Rules (docs/simulator.md lists them with their error codes; the facts behind
them, with their sources, are in docs/mig-geometry.md):

* MIG mode: on models that need a reset (Ampere) a change stays *pending*
  until a GPU reset or a reboot; elsewhere it takes effect at once. A process
  on the GPU makes the change fail with IN_USE. On reboot, models whose mode
  is persistent (InfoROM) keep it, others fall back to disabled.
* GPU instances need MIG enabled *now*, a profile the model has, a start from
  that profile's placements, free memory slices, room under the profile's
  instance count and the GPU's compute slices.
* Compute instances need a CI profile of their GI's profile and free compute
  slices in that GI. A GI that still holds CIs cannot be destroyed.
* A reset or reboot drops every GPU and compute instance.

Every operation: fault check, latency sleep (outside the lock, so threads on
different GPUs overlap as they do on hardware), then lock, load, check,
mutate, atomic save.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from migmanagerd.catalog.model import GiProfile, GpuModel
from migmanagerd.errors import UsageError
from migmanagerd.gpu.backend import (
    BackendError,
    ComputeInstance,
    GpuInfo,
    GpuInstance,
    GpuProcess,
    MigMode,
)
from migmanagerd.gpu.sim_faults import FAULT_CODE, FAULTS_ENV, PROCESS_FAULTS, env_faults, env_latency
from migmanagerd.gpu.sim_node import ModelCatalog, build_node, default_catalog, parse_node_spec
from migmanagerd.gpu.sim_state import SimCi, SimGi, SimGpu, SimNode, locked, read_node, write_node
from migmanagerd.log import get_logger

STATE_ENV = "MIGMANAGERD_SIM_STATE"
NODE_ENV = "MIGMANAGERD_SIM_NODE"

log = get_logger("gpu.sim")
T = TypeVar("T")


# --- state file entry points ------------------------------------------------


def state_path_from_env(path: str | os.PathLike[str] | None = None) -> Path:
    value = path if path is not None else os.environ.get(STATE_ENV)
    if not value:
        raise UsageError(f"no simulator state file: set {STATE_ENV} (e.g. /tmp/sim-node.json) or pass --state")
    return Path(value)


def init_node(
    state_path: str | os.PathLike[str],
    spec: str,
    *,
    latency: dict[str, float] | None = None,
    no_reset: bool = False,
    force: bool = False,
    catalog: ModelCatalog | None = None,
) -> SimNode:
    """Create the simulated node's state file from a spec (e.g. ``8xA100-SXM4-40GB``)."""
    path = Path(state_path)
    node = build_node(spec, parse_node_spec(spec, catalog), latency=latency, no_reset=no_reset)
    with locked(path):
        if path.exists() and not force:
            raise UsageError(f"simulated node state {path} already exists; use --force to replace it")
        write_node(path, node)
    return node


def reboot(state_path: str | os.PathLike[str], *, catalog: ModelCatalog | None = None) -> SimNode:
    """Simulate a node reboot: pending MIG modes apply where the mode is
    persistent, the mode is lost (disabled) where it is not; every instance
    and every attached process is gone."""
    path = Path(state_path)
    models = _Models(catalog)
    with locked(path):
        node = read_node(path)
        for gpu in node.gpus:
            model = models.get(gpu)
            if model is not None and model.mig_mode_persistent:
                gpu.mig_current = gpu.mig_pending
            else:
                gpu.mig_current = gpu.mig_pending = False
            gpu.instances.clear()
            gpu.processes.clear()
            gpu.mig_processes.clear()
        node.count("reboot")
        write_node(path, node)
    return node


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child not yet reaped still answers kill(0)
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class _Models:
    """Catalog models by name, loaded once."""

    def __init__(self, catalog: ModelCatalog | None) -> None:
        self._catalog = catalog
        self._cache: dict[str, GpuModel] = {}
        self._lock = threading.Lock()

    def get(self, gpu: SimGpu) -> GpuModel | None:
        if gpu.model is None:
            return None
        with self._lock:
            model = self._cache.get(gpu.model)
            if model is None:
                if self._catalog is None:
                    self._catalog = default_catalog()
                model = self._catalog.find(gpu.model)
                if model is None:
                    raise UsageError(f"GPU {gpu.index}: the catalog has no model '{gpu.model}' any more; run 'migmanagerd sim init --force'")
                self._cache[gpu.model] = model
            return model


# --- the rules (pure functions over the loaded state) -----------------------


def _lowest_free(used: set[int], start: int) -> int:
    i = start
    while i in used:
        i += 1
    return i


def gi_id_for(model: GpuModel, profile: GiProfile, start: int, used: set[int]) -> int:
    """GI ids as hardware hands them out where the pattern is known (facts §4:
    on 7-slice GPUs a 1g GI at slot s is 7+s, a 2g GI is 3+s/2; the full GPU
    is 0); otherwise the lowest free id from 1."""
    wanted: int | None = None
    if model.compute_slices == 7:
        if profile.compute_slices == model.compute_slices:
            wanted = 0
        elif profile.compute_slices == 1 and profile.memory_slices == 1:
            wanted = 7 + start
        elif profile.compute_slices == 2 and profile.memory_slices == 2:
            wanted = 3 + start // 2
    if wanted is not None and wanted not in used:
        return wanted
    return _lowest_free(used, 1)


def check_create_gi(gpu: SimGpu, model: GpuModel | None, profile_id: int, start: int) -> GiProfile:
    """Return the profile, or raise the BackendError hardware would."""
    act = "create GPU instance"
    if model is None:
        raise BackendError(gpu.index, act, "NOT_SUPPORTED", f"{gpu.name} has no MIG support")
    if not gpu.mig_current:
        pending = " (enable is pending a GPU reset)" if gpu.mig_pending else ""
        raise BackendError(gpu.index, act, "NOT_SUPPORTED", f"MIG mode is disabled{pending}")
    profile = model.gi_profile_by_id(profile_id)
    if profile is None:
        known = ", ".join(f"{p.nvml_id} ({p.name})" for p in model.gi_profiles)
        raise BackendError(gpu.index, act, "INVALID_ARGUMENT", f"{model.name} has no GI profile id {profile_id}; it has {known}")
    if start not in profile.placements:
        raise BackendError(gpu.index, act, "INVALID_ARGUMENT", f"{profile.name} cannot start at memory slice {start}; legal starts {list(profile.placements)}")
    mine = [gi for gi in gpu.instances if gi.profile_id == profile_id]
    if len(mine) >= profile.max_count:
        raise BackendError(gpu.index, act, "INSUFFICIENT_RESOURCES", f"{profile.name}: at most {profile.max_count} per GPU")
    new = profile.placement(start)
    for gi in gpu.instances:
        if new.start < gi.start + gi.size and gi.start < new.end:
            raise BackendError(gpu.index, act, "INSUFFICIENT_RESOURCES", f"{profile.name}@{start}:{new.size} overlaps GPU instance {gi.id} at {gi.start}:{gi.size}")
    used_compute = 0
    existing_names = set()
    for gi in gpu.instances:
        p = model.gi_profile_by_id(gi.profile_id)
        if p is not None:
            used_compute += p.compute_slices
            existing_names.add(p.name)
    if used_compute + profile.compute_slices > model.compute_slices:
        raise BackendError(gpu.index, act, "INSUFFICIENT_RESOURCES", f"{profile.name} needs {profile.compute_slices} compute slices; {model.compute_slices - used_compute} of {model.compute_slices} are free")
    for group in model.exclusive_groups:
        if profile.name in group:
            clash = sorted(n for n in existing_names & set(group) if n != profile.name)
            if clash:
                raise BackendError(gpu.index, act, "INSUFFICIENT_RESOURCES", f"{profile.name} cannot coexist with {', '.join(clash)}")
    return profile


def ci_starts(gi_compute: int, size: int, placements: tuple[int, ...]) -> tuple[int, ...]:
    if placements:
        return placements
    return tuple(range(0, gi_compute - size + 1, size))


# --- the backend ------------------------------------------------------------


class SimBackend:
    """The ``Backend`` protocol over a simulated node's state file."""

    name = "sim"

    def __init__(
        self,
        state_path: str | os.PathLike[str] | None = None,
        *,
        catalog: ModelCatalog | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.state_path = state_path_from_env(state_path)
        self._models = _Models(catalog)
        self._sleep = sleep
        if not self.state_path.exists():
            spec = os.environ.get(NODE_ENV, "").strip()
            if not spec:
                raise UsageError(
                    f"simulated node state {self.state_path} does not exist: set {NODE_ENV} (e.g. 8xA100-SXM4-40GB) "
                    f"or run 'migmanagerd sim init --node SPEC'"
                )
            try:
                init_node(self.state_path, spec, catalog=catalog)
                log.debug("created simulated node %s from %s=%s", self.state_path, NODE_ENV, spec)
            except UsageError:
                if not self.state_path.exists():
                    raise  # a bad spec; another process winning the race is fine
        node = read_node(self.state_path)
        wanted = os.environ.get(NODE_ENV, "").strip()
        if wanted and wanted != node.node:
            log.warning("%s=%s is ignored: %s already holds node %s (use 'sim init --force' to replace it)", NODE_ENV, wanted, self.state_path, node.node)
        self._latency = dict(node.latency)

    # -- plumbing --

    def _node(self) -> SimNode:
        return read_node(self.state_path)

    @staticmethod
    def _gpu(node: SimNode, index: int, action: str) -> SimGpu:
        gpu = node.gpu(index)
        if gpu is None:
            raise BackendError(index, action, "INVALID_ARGUMENT", f"no such GPU; this node has GPUs 0..{len(node.gpus) - 1}")
        return gpu

    @staticmethod
    def _gi(gpu: SimGpu, gi_id: int, index: int, action: str) -> SimGi:
        gi = next((g for g in gpu.instances if g.id == gi_id), None)
        if gi is None:
            raise BackendError(index, action, "NOT_FOUND", f"no GPU instance {gi_id}")
        return gi

    def _change(self, op: str, indices: tuple[int, ...], action: str, fn: Callable[[SimNode], T], *, count: int = 1) -> T:
        rule = PROCESS_FAULTS.hit(op, indices, env_faults())
        if rule is not None:
            index = indices[0] if len(indices) == 1 else (rule.gpu if rule.gpu is not None else None)
            raise BackendError(index, action, FAULT_CODE, f"injected by {FAULTS_ENV} rule {rule}")
        delay = {**self._latency, **env_latency()}.get(op, 0.0)
        if delay > 0:
            self._sleep(delay)  # outside the lock: other GPUs' threads carry on meanwhile
        with locked(self.state_path):
            node = read_node(self.state_path)
            result = fn(node)  # raises before mutating when a rule is broken
            node.count(op, count)
            write_node(self.state_path, node)
        return result

    # -- reads --

    def gpus(self) -> Sequence[GpuInfo]:
        return tuple(
            GpuInfo(
                index=g.index,
                uuid=g.uuid,
                name=g.name,
                pci_device_id=g.pci_device_id,
                pci_subsystem_id=g.pci_subsystem_id,
                pci_bus_id=g.pci_bus_id,
                memory_mib=g.memory_mib,
                mig_capable=g.mig_capable,
            )
            for g in self._node().gpus
        )

    def mig_mode(self, index: int) -> MigMode:
        gpu = self._gpu(self._node(), index, "get MIG mode")
        return MigMode(current=gpu.mig_current, pending=gpu.mig_pending)

    def gpu_instances(self, index: int) -> Sequence[GpuInstance]:
        gpu = self._gpu(self._node(), index, "list GPU instances")
        return tuple(
            GpuInstance(
                id=gi.id,
                profile_id=gi.profile_id,
                start=gi.start,
                size=gi.size,
                compute_instances=tuple(
                    ComputeInstance(ci.id, ci.profile_id, ci.start, ci.size, ci.uuid) for ci in sorted(gi.cis, key=lambda c: c.id)
                ),
            )
            for gi in sorted(gpu.instances, key=lambda g: (g.start, g.id))
        )

    def processes(self, index: int) -> Sequence[GpuProcess]:
        gpu = self._gpu(self._node(), index, "list processes")
        out = [GpuProcess(index, pid) for pid in gpu.processes if pid_alive(pid)]
        for pid, mig_uuid in gpu.mig_processes:
            where = _device_of(gpu, mig_uuid)
            if where is not None and pid_alive(pid):
                out.append(GpuProcess(index, pid, gi_id=where[0].id, ci_id=where[1].id))
        return tuple(out)

    def reset_available(self, index: int) -> bool:
        node = self._node()
        self._gpu(node, index, "query reset")
        return not node.no_reset

    # -- changes --

    def set_mig_mode(self, index: int, enabled: bool) -> None:
        action = f"{'enable' if enabled else 'disable'} MIG mode"

        def change(node: SimNode) -> None:
            gpu = self._gpu(node, index, action)
            model = self._mode_model(gpu, enabled, action)
            busy = _busy_pids(gpu)
            if busy:
                raise BackendError(index, action, "IN_USE", f"processes hold the GPU: {', '.join(map(str, busy))}")
            gpu.mig_pending = enabled
            if not model.mig_mode_needs_reset:
                gpu.mig_current = enabled

        self._change("set_mode", (index,), action, change)

    def _mode_model(self, gpu: SimGpu, enabled: bool, action: str) -> GpuModel:
        """The checks both mode calls make before anything changes."""
        model = self._models.get(gpu)
        if model is None:
            raise BackendError(gpu.index, action, "NOT_SUPPORTED", f"{gpu.name} has no MIG support")
        if not enabled and gpu.instances:
            raise BackendError(gpu.index, action, "IN_USE", f"{len(gpu.instances)} GPU instance(s) exist; destroy them first")
        return model

    def request_mig_mode(self, index: int, enabled: bool, *, busy: bool = False) -> str:
        """``nvmlDeviceSetMigMode`` as drivers answer it: the change is recorded
        (pending) and the *activation status* says whether it is active.

        NVIDIA's MIG user guide shows both non-SUCCESS answers with the change
        left pending: ``IN_USE`` when processes or monitoring agents hold the
        GPU (``busy``: the caller knows of such agents), ``NOT_SUPPORTED`` where
        the GPU cannot be reset (a passthrough VM). Errors before any change
        (no MIG, instances left on disable) raise as ``set_mig_mode`` does.
        """
        action = f"{'enable' if enabled else 'disable'} MIG mode"

        def change(node: SimNode) -> str:
            gpu = self._gpu(node, index, action)
            model = self._mode_model(gpu, enabled, action)
            gpu.mig_pending = enabled
            if not model.mig_mode_needs_reset:
                gpu.mig_current = enabled
                return "SUCCESS"
            if gpu.mig_current == enabled:
                return "SUCCESS"
            if busy or _busy_pids(gpu):
                return "IN_USE"
            if node.no_reset:
                return "NOT_SUPPORTED"
            return "SUCCESS"

        return self._change("set_mode", (index,), action, change)

    def create_gpu_instance(self, index: int, profile_id: int, start: int) -> GpuInstance:
        action = "create GPU instance"

        def change(node: SimNode) -> GpuInstance:
            gpu = self._gpu(node, index, action)
            model = self._models.get(gpu)
            profile = check_create_gi(gpu, model, profile_id, start)
            assert model is not None
            gi_id = gi_id_for(model, profile, start, {gi.id for gi in gpu.instances})
            gpu.instances.append(SimGi(gi_id, profile_id, start, profile.memory_slices))
            return GpuInstance(gi_id, profile_id, start, profile.memory_slices)

        return self._change("create_gi", (index,), action, change)

    def create_compute_instance(self, index: int, gi_id: int, ci_profile_id: int) -> ComputeInstance:
        action = f"create compute instance in GPU instance {gi_id}"

        def change(node: SimNode) -> ComputeInstance:
            gpu = self._gpu(node, index, action)
            gi = self._gi(gpu, gi_id, index, action)
            model = self._models.get(gpu)
            if model is None:
                raise BackendError(index, action, "NOT_FOUND", f"no GPU instance {gi_id}")
            gip = model.gi_profile_by_id(gi.profile_id)
            cip = next((c for c in gip.ci_profiles if c.nvml_id == ci_profile_id), None) if gip else None
            if gip is None or cip is None:
                known = ", ".join(f"{c.nvml_id} ({c.name})" for c in (gip.ci_profiles if gip else ()))
                raise BackendError(index, action, "INVALID_ARGUMENT", f"CI profile {ci_profile_id} is not one of this GPU instance's ({known})")
            if sum(1 for c in gi.cis if c.profile_id == ci_profile_id) >= cip.max_count:
                raise BackendError(index, action, "INSUFFICIENT_RESOURCES", f"{cip.name}: at most {cip.max_count} per GPU instance")
            taken = 0
            for c in gi.cis:
                taken |= ((1 << c.size) - 1) << c.start
            for s in ci_starts(gip.compute_slices, cip.compute_slices, cip.placements):
                mask = ((1 << cip.compute_slices) - 1) << s
                if s + cip.compute_slices <= gip.compute_slices and not mask & taken:
                    break
            else:
                raise BackendError(index, action, "INSUFFICIENT_RESOURCES", f"no {cip.compute_slices} free compute slices for {cip.name}")
            ci = SimCi(_lowest_free({c.id for c in gi.cis}, 0), ci_profile_id, s, cip.compute_slices, f"MIG-{uuid.uuid4()}")
            gi.cis.append(ci)
            return ComputeInstance(ci.id, ci.profile_id, ci.start, ci.size, ci.uuid)

        return self._change("create_ci", (index,), action, change)

    def destroy_compute_instance(self, index: int, gi_id: int, ci_id: int) -> None:
        action = f"destroy compute instance {ci_id} of GPU instance {gi_id}"

        def change(node: SimNode) -> None:
            gpu = self._gpu(node, index, action)
            gi = self._gi(gpu, gi_id, index, action)
            ci = next((c for c in gi.cis if c.id == ci_id), None)
            if ci is None:
                raise BackendError(index, action, "NOT_FOUND", f"no compute instance {ci_id} in GPU instance {gi_id}")
            users = [pid for pid, u in gpu.mig_processes if u == ci.uuid and pid_alive(pid)]
            if users:
                raise BackendError(index, action, "IN_USE", f"processes run on {ci.uuid}: {', '.join(map(str, users))}")
            gi.cis.remove(ci)

        self._change("destroy_ci", (index,), action, change)

    def destroy_gpu_instance(self, index: int, gi_id: int) -> None:
        action = f"destroy GPU instance {gi_id}"

        def change(node: SimNode) -> None:
            gpu = self._gpu(node, index, action)
            gi = self._gi(gpu, gi_id, index, action)
            if gi.cis:
                raise BackendError(index, action, "IN_USE", f"it still holds compute instance(s) {', '.join(str(c.id) for c in gi.cis)}")
            gpu.instances.remove(gi)

        self._change("destroy_gi", (index,), action, change)

    def reset(self, indices: Sequence[int]) -> None:
        targets = tuple(dict.fromkeys(indices))
        if not targets:
            return
        action = "reset GPU"

        def change(node: SimNode) -> None:
            gpus = [self._gpu(node, i, action) for i in targets]
            if node.no_reset:
                raise BackendError(targets[0], action, "NOT_SUPPORTED", "GPU reset is not available here (passthrough VM); reboot the node")
            for gpu in gpus:
                busy = _busy_pids(gpu)
                if busy:
                    raise BackendError(gpu.index, action, "IN_USE", f"processes hold the GPU: {', '.join(map(str, busy))}")
            for gpu in gpus:
                if gpu.mig_capable:
                    gpu.mig_current = gpu.mig_pending
                gpu.instances.clear()

        self._change("reset", targets, action, change, count=len(targets))  # one per GPU reset

    def close(self) -> None:
        pass

    # -- simulator-only: GPU processes --

    def attach(self, index: int, pid: int) -> None:
        """Record that process ``pid`` holds GPU ``index`` (until it exits or is detached)."""
        if pid <= 0:
            raise UsageError(f"GPU {index}: attach: '{pid}' is not a process id")
        with locked(self.state_path):
            node = read_node(self.state_path)
            gpu = self._gpu(node, index, "attach process")
            if pid not in gpu.processes:
                gpu.processes.append(pid)
                write_node(self.state_path, node)

    def detach(self, index: int, pid: int) -> None:
        with locked(self.state_path):
            node = read_node(self.state_path)
            gpu = self._gpu(node, index, "detach process")
            on_devices = [(p, u) for p, u in gpu.mig_processes if p == pid]
            if pid not in gpu.processes and not on_devices:
                raise BackendError(index, "detach process", "NOT_FOUND", f"process {pid} is not attached")
            if pid in gpu.processes:
                gpu.processes.remove(pid)
            for item in on_devices:
                gpu.mig_processes.remove(item)
            write_node(self.state_path, node)

    def attach_device(self, mig_uuid: str, pid: int) -> int:
        """Record that ``pid`` runs on the MIG device ``mig_uuid``; returns its GPU index.
        While it lives, that device cannot be destroyed and its GPU neither
        reset nor switched (as on hardware)."""
        if pid <= 0:
            raise UsageError(f"{mig_uuid}: attach: '{pid}' is not a process id")
        with locked(self.state_path):
            node = read_node(self.state_path)
            for gpu in node.gpus:
                if _device_of(gpu, mig_uuid) is not None:
                    if (pid, mig_uuid) not in gpu.mig_processes:
                        gpu.mig_processes.append((pid, mig_uuid))
                        write_node(self.state_path, node)
                    return gpu.index
        raise UsageError(f"no MIG device {mig_uuid} on this simulated node")

    def snapshot(self) -> SimNode:
        """The whole simulated node, for ``sim show`` and tests."""
        return self._node()

    def model_of(self, index: int) -> GpuModel | None:
        return self._models.get(self._gpu(self._node(), index, "look up model"))


def _device_of(gpu: SimGpu, mig_uuid: str) -> tuple[SimGi, SimCi] | None:
    for gi in gpu.instances:
        for ci in gi.cis:
            if ci.uuid == mig_uuid:
                return gi, ci
    return None


def _busy_pids(gpu: SimGpu) -> list[int]:
    """Live processes on the GPU or on any of its MIG devices."""
    pids = [p for p in gpu.processes if pid_alive(p)]
    pids += [p for p, u in gpu.mig_processes if _device_of(gpu, u) is not None and pid_alive(p) and p not in pids]
    return pids


def describe(node: SimNode, catalog: ModelCatalog | None = None) -> dict[str, Any]:
    """``sim show --json``: stable keys, one ``instances`` entry per MIG device."""
    models = _Models(catalog)
    gpus = []
    for gpu in node.gpus:
        model = models.get(gpu)
        instances = []
        for gi in sorted(gpu.instances, key=lambda g: (g.start, g.id)):
            gip = model.gi_profile_by_id(gi.profile_id) if model else None
            gi_name = gip.name if gip else f"profile-{gi.profile_id}"
            if not gi.cis:
                instances.append({"profile": gi_name, "start": gi.start, "size": gi.size, "uuid": None, "gi_id": gi.id, "ci_id": None})
            for ci in sorted(gi.cis, key=lambda c: c.id):
                cip = next((c for c in gip.ci_profiles if c.nvml_id == ci.profile_id), None) if gip else None
                instances.append(
                    {
                        "profile": cip.name if cip else gi_name,
                        "start": gi.start,
                        "size": gi.size,
                        "uuid": ci.uuid,
                        "gi_id": gi.id,
                        "ci_id": ci.id,
                    }
                )
        gpus.append(
            {
                "index": gpu.index,
                "uuid": gpu.uuid,
                "model": gpu.model,
                "device_id": f"0x{gpu.pci_device_id:08X}",
                "mig_enabled": gpu.mig_current,
                "mig_pending": gpu.mig_pending,
                "instances": instances,
                "processes": [p for p in gpu.processes if pid_alive(p)],
                "mig_processes": [
                    {"pid": p, "uuid": u} for p, u in gpu.mig_processes if _device_of(gpu, u) is not None and pid_alive(p)
                ],
            }
        )
    return {"node": node.node, "gpus": gpus, "ops": dict(node.ops)}
