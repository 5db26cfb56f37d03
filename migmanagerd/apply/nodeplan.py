"""What a config asks of this node, per GPU: pure over an observation.

Resolution of entries to GPUs and the per-GPU placement plan are the
planner's (``planner.node.resolve_config``, ``planner.placement.plan_gpu``);
this module adds MIG-mode semantics on top:

* target enabled while the GPU is (or will be after reset) disabled: a mode
  change, and geometry is planned from an empty GPU because the reset that
  activates the mode clears all instances (MIG user guide, "persistence": GIs
  and CIs do not survive a GPU reset);
* target disabled: every instance is destroyed, then MIG is disabled;
* a GPU the config does not select is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from migmanagerd.apply.observe import GpuView, NodeState
from migmanagerd.errors import UsageError
from migmanagerd.planner.exact import plan_exact
from migmanagerd.planner.node import GpuSlot, GpuTarget, resolve_config
from migmanagerd.planner.placement import plan_gpu
from migmanagerd.planner.types import GpuPlan, Infeasible, MigDevice
from migmanagerd.spec.types import MigConfig


@dataclass(frozen=True)
class GpuPlanEntry:
    index: int
    model: str
    mode_current: bool
    mode_pending: bool
    mode_target: bool | None  # None: the config does not select this GPU
    result: GpuPlan | Infeasible | None  # None: not selected
    mode_only: bool = False
    target_devices: tuple[tuple[str, int], ...] = ()  # canonical profile -> count, file order
    current_devices: tuple[MigDevice, ...] = ()  # as observed (empty while MIG is off)

    @property
    def selected(self) -> bool:
        return self.mode_target is not None

    @property
    def feasible(self) -> bool:
        return not isinstance(self.result, Infeasible)

    @property
    def needs_mode_change(self) -> bool:
        t = self.mode_target
        return t is not None and (t != self.mode_current or t != self.mode_pending)

    @property
    def needs_geometry_change(self) -> bool:
        return isinstance(self.result, GpuPlan) and not self.result.is_noop

    @property
    def error(self) -> str | None:
        if isinstance(self.result, Infeasible):
            return f"GPU {self.index} ({self.model}): {self.result.reason}"
        return None


@dataclass(frozen=True)
class NodePlan:
    config: str
    gpus: tuple[GpuPlanEntry, ...]
    mode_only: bool = False

    @property
    def feasible(self) -> bool:
        return all(g.feasible for g in self.gpus)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(e for e in (g.error for g in self.gpus) if e)

    @property
    def mode_change_gpus(self) -> tuple[int, ...]:
        return tuple(g.index for g in self.gpus if g.needs_mode_change)

    @property
    def geometry_change_gpus(self) -> tuple[int, ...]:
        return tuple(g.index for g in self.gpus if g.needs_geometry_change)

    @property
    def selected_gpus(self) -> tuple[int, ...]:
        return tuple(g.index for g in self.gpus if g.selected)

    @property
    def needs_change(self) -> bool:
        return bool(self.mode_change_gpus or self.geometry_change_gpus)

    def gpu(self, index: int) -> GpuPlanEntry:
        for g in self.gpus:
            if g.index == index:
                return g
        raise KeyError(index)


def require_feasible(plan: NodePlan) -> None:
    """Raise a usage error (exit 2, nothing touched) naming every GPU that cannot take the config."""
    if plan.feasible:
        return
    # Eight identical GPUs fail for one reason: say it once, naming them all.
    by_reason: dict[tuple[str, str], list[int]] = {}
    for g in plan.gpus:
        if isinstance(g.result, Infeasible):
            by_reason.setdefault((g.model, g.result.reason), []).append(g.index)
    reasons = "; ".join(
        f"{'GPU' if len(idx) == 1 else 'GPUs'} {', '.join(map(str, idx))} ({model}): {reason}"
        for (model, reason), idx in by_reason.items()
    )
    raise UsageError(f"config '{plan.config}' does not fit this node: {reasons}")


def slot_of(view: GpuView) -> GpuSlot:
    info = view.info
    return GpuSlot(
        index=info.index,
        pci_device_id=info.pci_device_id,
        pci_subsystem_id=info.pci_subsystem_id,
        model=view.model,
        mig_capable=info.mig_capable,
    )


def _target_devices(target: GpuTarget) -> tuple[tuple[str, int], ...]:
    return tuple((str(p), n) for p, n in target.mig_devices if n)


def plan_one(view: GpuView, target: GpuTarget | None, *, mode_only: bool = False) -> GpuPlanEntry:
    mode = view.mode

    def entry(
        mode_target: bool | None, result: GpuPlan | Infeasible | None, devices: tuple[tuple[str, int], ...] = ()
    ) -> GpuPlanEntry:
        return GpuPlanEntry(
            index=view.index, model=view.model_name, mode_current=mode.current, mode_pending=mode.pending,
            mode_target=mode_target, result=result, mode_only=mode_only, target_devices=devices,
            current_devices=view.devices if mode.current else (),
        )

    if target is None:
        return entry(None, None)
    if not target.mig_enabled:
        # Disabling: every instance goes first; the mode switch follows.
        return entry(False, GpuPlan(keep=(), destroy=view.devices if mode.current else (), create=()))
    # Enabled while the mode that is active now is off: the activating reset
    # clears the GPU, so the layout is built from nothing.
    current: tuple[MigDevice, ...] = view.devices if mode.current else ()
    devices = _target_devices(target)
    if mode_only:
        return entry(True, GpuPlan(keep=current, destroy=(), create=()), devices)
    if view.model is None:
        reason = f"unknown GPU model '{view.info.name}' (PCI id 0x{view.info.pci_device_id:08X}); no MIG geometry for it"
        return entry(True, Infeasible(reason), devices)
    if target.layout is not None:  # restore: the checkpoint's placements
        return entry(True, plan_exact(view.model, current, target.layout), devices)
    return entry(True, plan_gpu(view.model, current, target.mig_devices), devices)


def plan_node(config: MigConfig, state: NodeState, *, mode_only: bool = False) -> NodePlan:
    """Plan ``config`` over the observed node. Raises only for selection errors
    (e.g. a non-MIG GPU named with mig-enabled: true); infeasible geometry is
    reported in the plan, not raised."""
    targets = resolve_config(config, [slot_of(v) for v in state.gpus])
    entries = tuple(plan_one(v, targets.get(v.index), mode_only=mode_only) for v in state.gpus)
    return NodePlan(config=config.name, gpus=entries, mode_only=mode_only)

