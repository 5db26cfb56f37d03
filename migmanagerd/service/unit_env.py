"""Did systemd load the selection the drop-in was written to hold?

A drop-in can mean something else to systemd than to its author (a later
drop-in overriding ours, a hand edit systemd rejects), and ``select`` must not
report success for a selection the unit will never see. After the reload we
read the unit's ``Environment`` back over D-Bus and compare our variables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from migmanagerd.service.selector import OWNED_VARS

UNIT = "nvidia-mig-manager.service"


class _Manager(Protocol):
    def service_environment(self, name: str) -> tuple[str, ...]: ...


def environment_map(assignments: Sequence[str]) -> dict[str, str]:
    """``["A=1", "B=2", "A=3"]`` -> ``{"A": "3", "B": "2"}``: later entries
    win, as in the process environment systemd builds from them."""
    env: dict[str, str] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if sep and name:
            env[name] = value
    return env


def mismatches(expected: Mapping[str, str], unit_env: Mapping[str, str]) -> list[str]:
    """One line per variable of ours whose value in the unit differs from the
    drop-in's (pure). ``expected`` holds the drop-in's values of our
    variables; one it does not set must be unset in the unit too."""
    out = []
    for var in OWNED_VARS:
        want, have = expected.get(var), unit_env.get(var)
        if want == have:
            continue
        shown_have = "unset" if have is None else f"'{have}'"
        shown_want = "unset" if want is None else f"'{want}'"
        out.append(f"{var} is {shown_have} in the unit, the drop-in sets {shown_want}")
    return out


def confirm_unit_environment(manager: _Manager, expected: Mapping[str, str], unit: str = UNIT) -> list[str]:
    """What the loaded ``unit`` disagrees with the drop-in on; empty when it agrees."""
    return mismatches(expected, environment_map(manager.service_environment(unit)))
