"""``assert``: what differs between the node and a config, one line per GPU.

Placement does not matter here, only the multiset of GPU instances with their
compute instances (shapes, planner.packing): a node that holds the right
devices at other slots runs the same workloads. Unlike nvidia-mig-parted's
assert, which counts compute instances only, the grouping of compute
instances into GPU instances counts too, so assert agrees with what apply
would change. A pending mode
that differs from the current one counts as not applied, since the node does
not yet run in the mode the config wants.
"""

from __future__ import annotations

from collections import Counter

from migmanagerd.apply.nodeplan import GpuPlanEntry, NodePlan
from migmanagerd.planner.types import GpuPlan


def _onoff(flag: bool) -> str:
    return "enabled" if flag else "disabled"


def format_devices(counts: Counter[str] | dict[str, int]) -> str:
    items = sorted((p, n) for p, n in counts.items() if n)
    return ", ".join(f"{p} x{n}" for p, n in items) if items else "none"


def gpu_difference(entry: GpuPlanEntry, config: str, *, mode_only: bool = False) -> str | None:
    """One line saying how GPU ``entry.index`` differs from ``config``, or None."""
    want = entry.mode_target
    if want is None:
        return None
    if entry.mode_current != want or entry.mode_pending != want:
        now = _onoff(entry.mode_current)
        if entry.mode_pending != entry.mode_current:
            now += f" ({_onoff(entry.mode_pending)} pending a GPU reset)"
        return f"GPU {entry.index}: MIG mode is {now}, config '{config}' wants {_onoff(want)}"
    if mode_only or not want:
        return None
    have = Counter(d.profile for d in entry.current_devices)
    wanted: Counter[str] = Counter()
    if isinstance(entry.result, GpuPlan):
        # GPU-instance shapes as planned (CIs packed as nvidia-mig-parted does)
        wanted.update(d.profile for d in entry.result.target)
    else:
        for profile, n in entry.target_devices:
            wanted[profile] += n
    if have == wanted:
        return None
    return f"GPU {entry.index}: has {format_devices(have)}, wants {format_devices(wanted)}"


def differences(plan: NodePlan) -> list[str]:
    """Every GPU that differs from ``plan.config``; empty when it is applied."""
    out = []
    for entry in plan.gpus:
        line = gpu_difference(entry, plan.config, mode_only=plan.mode_only)
        if line:
            out.append(line)
    return out
