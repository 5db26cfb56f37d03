"""Which parts of a plan rest on catalog rows no primary source confirms.

The catalog flags every GPU-instance profile whose numbers (placements,
counts, memory) are inferred with ``confirmed: false``. A plan that creates
such a profile may be refused by the driver even though the planner accepted
it; ``validate`` and ``plan`` say so, so an operator can check the profile on
the hardware first (docs/hardware-validation.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from migmanagerd.catalog.model import GpuModel
from migmanagerd.spec.profile import MigProfile, ProfileNameError


def inferred_profiles(model: GpuModel, profiles: Iterable[str | MigProfile]) -> tuple[str, ...]:
    """The GPU-instance profiles among ``profiles`` that ``model`` flags ``confirmed: false``."""
    out: dict[str, None] = {}
    for raw in profiles:
        try:
            gi_name = (raw if isinstance(raw, MigProfile) else MigProfile.parse(str(raw))).gi_name
        except ProfileNameError:
            continue  # not a profile name: the planner reports it
        gi = model.gi_profile(gi_name)
        if gi is not None and not gi.confirmed:
            out[gi.name] = None
    return tuple(out)


def note(where: str, model: GpuModel, names: tuple[str, ...]) -> str:
    return (
        f"note: {where} ({model.name}) rests on placements the catalog has not confirmed "
        f"(confirmed: false): {', '.join(names)}; check them on the hardware (docs/hardware-validation.md)"
    )
