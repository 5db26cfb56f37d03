"""The node's MIG layout as the integrations need it (with GI and CI ids)."""

from __future__ import annotations

from migmanagerd.apply.observe import NodeState, ci_profile_name
from migmanagerd.integrations.layout import GpuLayout, MigDeviceInfo, NodeLayout


def node_layout(state: NodeState) -> NodeLayout:
    gpus = []
    for view in state.gpus:
        devices = tuple(
            MigDeviceInfo(view.index, gi.id, ci.id, ci_profile_name(view.model, gi, ci), ci.uuid)
            for gi in view.instances
            for ci in gi.compute_instances
        )
        gpus.append(GpuLayout(view.index, view.model_name, view.info.uuid, view.mode.current, devices))
    return NodeLayout(tuple(gpus))
