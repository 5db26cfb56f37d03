"""``generate-config``: a v1 config for the GPU models in this node.

Like the configs NVIDIA ships (config-default.yaml), it offers:

* ``all-disabled`` and ``all-enabled`` (MIG on, no devices);
* ``all-PROFILE`` for every GPU-instance profile of every model present,
  with as many devices of it as fit (proved by the placement planner, not
  taken from the profile's instance count alone); attribute suffixes are
  written as nvidia-mig-parted names them (``1g.5gb+me`` -> ``all-1g.5gb.me``);
* ``all-balanced``: one device of each plain profile size up to half the GPU,
  largest first, then the smallest profile repeated while it fits. On A100,
  H100 and A30 this is exactly NVIDIA's ``all-balanced``.

Entries carry device-filters, so one file serves a node of mixed models.
"""

from __future__ import annotations

from collections.abc import Sequence

from migmanagerd.apply.configtext import ConfigText, EntryText
from migmanagerd.catalog.model import GiProfile, GpuModel
from migmanagerd.planner.placement import plan_gpu
from migmanagerd.planner.types import GpuPlan
from migmanagerd.spec.profile import MigProfile


def config_name_for(profile: str) -> str:
    """nvidia-mig-parted's config names: ``+`` attributes become ``.``, ``-`` stays."""
    return "all-" + profile.replace("+", ".").replace(",", ".")


def _fits(model: GpuModel, target: list[tuple[str, int]]) -> bool:
    wanted = [(MigProfile.parse(p), n) for p, n in target if n]
    return isinstance(plan_gpu(model, (), wanted), GpuPlan)


def max_fit(model: GpuModel, gi: GiProfile) -> int:
    """How many devices of ``gi`` (its full compute instance) fit on an empty GPU."""
    for n in range(gi.max_count, 0, -1):
        if _fits(model, [(gi.name, n)]):
            return n
    return 0


def balanced(model: GpuModel) -> tuple[tuple[str, int], ...]:
    plain: dict[int, GiProfile] = {}
    for gi in model.gi_profiles:
        if gi.attributes or gi.full_ci is None:
            continue
        best = plain.get(gi.compute_slices)
        if best is None or gi.memory_slices < best.memory_slices:
            plain[gi.compute_slices] = gi
    sizes = sorted((c for c in plain if 2 * c <= model.compute_slices), reverse=True)
    chosen: list[tuple[str, int]] = []
    for c in sizes:
        if _fits(model, chosen + [(plain[c].name, 1)]):
            chosen.append((plain[c].name, 1))
    if sizes:
        smallest = plain[sizes[-1]].name
        while True:
            trial = [(p, n + 1 if p == smallest else n) for p, n in chosen]
            if smallest not in dict(chosen):
                trial.append((smallest, 1))
            if not _fits(model, trial):
                break
            chosen = trial
    # Smallest first, as NVIDIA's file lists them.
    chosen.sort(key=lambda pn: MigProfile.parse(pn[0]))
    return tuple(chosen)


def generate(models: Sequence[GpuModel]) -> list[ConfigText]:
    # Distinct, node order; a model without PCI ids cannot be filtered for,
    # and an unfiltered entry would hit every GPU of the node.
    models = [m for m in dict.fromkeys(models) if m.pci_ids]
    configs = [
        ConfigText("all-disabled", (EntryText("all", (), False),)),
        ConfigText("all-enabled", (EntryText("all", (), True, ()),)),
    ]
    per_profile: dict[str, list[EntryText]] = {}
    for model in models:
        for gi in sorted(model.gi_profiles, key=lambda g: (MigProfile.parse(g.name), g.name)):
            n = max_fit(model, gi)
            if n == 0:
                continue
            per_profile.setdefault(gi.name, []).append(
                EntryText("all", model.pci_ids, True, ((gi.name, n),), comment=model.name)
            )
    for profile in sorted(per_profile, key=lambda p: (MigProfile.parse(p), p)):
        configs.append(ConfigText(config_name_for(profile), tuple(per_profile[profile])))
    balanced_entries = []
    for model in models:
        devices = balanced(model)
        if devices:
            balanced_entries.append(EntryText("all", model.pci_ids, True, devices, comment=model.name))
    if balanced_entries:
        configs.append(ConfigText("all-balanced", tuple(balanced_entries)))
    return configs
