"""Machine-readable forms of a plan and of the node (``plan --json``,
``export --json``). The keys are a contract (docs/engine.md); add, never rename."""

from __future__ import annotations

from typing import Any

from migmanagerd.apply.nodeplan import NodePlan
from migmanagerd.apply.observe import NodeState
from migmanagerd.planner.types import GiAdjust, GpuPlan, MigDevice


def device_json(device: MigDevice) -> dict[str, Any]:
    out: dict[str, Any] = {"profile": device.profile, "start": device.placement.start, "size": device.placement.size}
    if device.uuid:
        out["uuid"] = device.uuid
    if len(device.cis) > 1:
        # a GPU instance holding several compute instances (packed CIs)
        cis = []
        for ci in device.cis:
            item: dict[str, Any] = {"profile": ci.profile}
            if ci.uuid:
                item["uuid"] = ci.uuid
            cis.append(item)
        out["cis"] = cis
    return out


def adjust_json(change: GiAdjust) -> dict[str, Any]:
    """A kept GPU instance whose compute instances change (packed CIs)."""
    out = device_json(change.current)
    out["target"] = change.target.profile
    out["destroy_cis"] = [{"profile": c.profile, **({"uuid": c.uuid} if c.uuid else {})} for c in change.destroy]
    out["create_cis"] = list(change.create)
    return out


def plan_json(plan: NodePlan) -> dict[str, Any]:
    gpus = []
    for entry in plan.gpus:
        result = entry.result
        adjust: tuple[GiAdjust, ...] = ()
        if isinstance(result, GpuPlan):
            keep, destroy, create, adjust = result.keep, result.destroy, result.create, result.adjust
        elif result is None:  # not selected: everything stays
            keep, destroy, create = entry.current_devices, (), ()
        else:  # infeasible: nothing would be done; the reason is in "errors"
            keep, destroy, create = (), (), ()
        gpus.append(
            {
                "index": entry.index,
                "model": entry.model,
                "mode": {"current": entry.mode_current, "target": entry.mode_target},
                "keep": [device_json(d) for d in keep],
                "destroy": [device_json(d) for d in destroy],
                "create": [device_json(d) for d in create],
                "adjust": [adjust_json(a) for a in adjust],
            }
        )
    return {"config": plan.config, "feasible": plan.feasible, "gpus": gpus, "errors": list(plan.errors)}


def node_json(state: NodeState) -> dict[str, Any]:
    """The node as it is: per GPU, one ``instances`` entry per MIG device
    (compute instance); a GPU instance without compute instances appears once
    with ``uuid`` null. Same per-GPU shape as ``sim show --json``."""
    gpus = []
    for view in state.gpus:
        instances = []
        model = view.model
        for gi in view.instances:
            gi_profile = model.gi_profile_by_id(gi.profile_id) if model else None
            gi_name = gi_profile.name if gi_profile else f"gi-profile-{gi.profile_id}"
            if not gi.compute_instances:
                instances.append({"profile": gi_name, "start": gi.start, "size": gi.size, "uuid": None})
            for ci in gi.compute_instances:
                ci_profile = None
                if gi_profile is not None:
                    ci_profile = next((c for c in gi_profile.ci_profiles if c.nvml_id == ci.profile_id), None)
                name = ci_profile.name if ci_profile else f"{gi_name}[ci-profile-{ci.profile_id}]"
                instances.append({"profile": name, "start": gi.start, "size": gi.size, "uuid": ci.uuid})
        gpus.append(
            {
                "index": view.index,
                "uuid": view.info.uuid,
                "model": model.name if model else None,
                "device_id": f"0x{view.info.pci_device_id:08X}",
                "mig_enabled": view.mode.current,
                "mig_pending": view.mode.pending,
                "instances": instances,
            }
        )
    return {"gpus": gpus}
