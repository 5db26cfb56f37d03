"""One reboot, never a reboot loop.

Where a GPU cannot be reset (a passthrough VM: NVML's set-MIG-mode reports
NVML_ERROR_RESET_REQUIRED, "VM reboot needed"), a MIG mode change only takes
effect after a reboot. The service may request that reboot ONCE per config:
before requesting it, it arms a marker in state.json (``reboot_guard``) that
records the config and the kernel's boot id. On the next boot:

* the mode is right       -> the caller clears the marker (clear_marker);
* the mode is still wrong -> the marker is from an earlier boot, so the reboot
  did not help: fail and tell the operator, instead of rebooting again.

The decision itself is a pure function (decide_reboot); arming and clearing
the marker are one atomic state.json write each.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from migmanagerd.service.state import RebootMarker, State, StateStore, utc_now

REARM_COMMAND = "migmanagerd service --rearm-reboot"
MANUAL_REBOOT_COMMAND = "systemctl reboot"


class RebootAction(enum.Enum):
    REBOOT = "reboot"  # arm the marker, then request a reboot
    WAIT = "wait"  # this boot already requested one; do not request another
    FAIL_ALREADY_REBOOTED = "fail-already-rebooted"  # a reboot already failed to help
    FAIL_NO_REBOOT = "fail-no-reboot"  # rebooting is disabled; the operator must reboot

    @property
    def failed(self) -> bool:
        return self in (RebootAction.FAIL_ALREADY_REBOOTED, RebootAction.FAIL_NO_REBOOT)


@dataclass(frozen=True)
class RebootDecision:
    action: RebootAction
    message: str  # one line, for the journal, STATUS= and `migmanagerd status`
    marker: RebootMarker | None = None  # REBOOT: the marker to arm before rebooting


def _gpu_list(gpus: Sequence[int]) -> str:
    gpus = sorted(set(gpus))
    if not gpus:
        return "GPUs"
    return ("GPU " if len(gpus) == 1 else "GPUs ") + ", ".join(str(g) for g in gpus)


def decide_reboot(
    marker: RebootMarker | None,
    current_boot_id: str,
    config: str,
    gpus: Sequence[int],
    allow_reboot: bool,
    *,
    now: str | None = None,
    disabled_by: str = "--no-reboot or MIGMANAGERD_NO_REBOOT",
) -> RebootDecision:
    """What to do when ``gpus`` need a reboot to reach the MIG mode of ``config``.

    ``marker`` is the armed marker from state.json (None if none). An unknown
    boot id (empty string, on either side) cannot prove that a reboot has NOT
    happened yet, so any marker then counts as "already rebooted": the guard
    errs towards failing, never towards a second reboot.
    """
    where = f"config '{config}': {_gpu_list(gpus)}"
    if marker is not None:
        same_boot = bool(current_boot_id) and marker.boot_id == current_boot_id
        if same_boot:
            return RebootDecision(
                RebootAction.WAIT,
                f"{where}: a reboot to change MIG mode was already requested at {marker.armed_at} "
                f"for config '{marker.config}'; not requesting another",
            )
        if marker.config == config or not current_boot_id or not marker.boot_id:
            return RebootDecision(
                RebootAction.FAIL_ALREADY_REBOOTED,
                f"{where}: MIG mode is still not applied after the reboot requested at "
                f"{marker.armed_at} (boot {marker.boot_id or 'unknown'}); not rebooting again. "
                f"See 'migmanagerd status'; to allow one more reboot run: {REARM_COMMAND}",
            )
        # a marker for another config: the operator has selected a new config
        # since; that config gets its own single reboot (falls through)
    if not allow_reboot:
        return RebootDecision(
            RebootAction.FAIL_NO_REBOOT,
            f"{where}: changing MIG mode needs a reboot here (the GPU cannot be reset, e.g. in a "
            f"passthrough VM) and rebooting is disabled ({disabled_by}); reboot the node by hand: "
            f"{MANUAL_REBOOT_COMMAND}",
        )
    new_marker = RebootMarker(config, now or utc_now(), current_boot_id, tuple(sorted(set(gpus))))
    return RebootDecision(
        RebootAction.REBOOT,
        f"{where}: changing MIG mode needs a reboot (the GPU cannot be reset here); rebooting once",
        new_marker,
    )


# --- state.json (I/O) --------------------------------------------------------------


def arm_marker(store: StateStore, marker: RebootMarker) -> None:
    """Persist the marker; call BEFORE requesting the reboot, so a reboot
    that happens is always one the next boot knows about."""
    store.update(lambda s: replace(s, reboot_guard=marker))


def clear_marker(store: StateStore) -> bool:
    """Forget the marker (the mode change succeeded, or the operator re-arms
    the guard); True if there was one."""
    had: list[bool] = []

    def change(s: State) -> State:
        had.append(s.reboot_guard is not None)
        return replace(s, reboot_guard=None)

    store.update(change)
    return had[0]


rearm = clear_marker  # `migmanagerd service --rearm-reboot`


def guard_reboot(store: StateStore, config: str, gpus: Sequence[int], allow_reboot: bool, **kw: Any) -> RebootDecision:
    """Load the marker, decide, and arm it when the decision is REBOOT.
    The caller requests the reboot afterwards (without waiting for the job:
    this unit is stopped by the shutdown it starts)."""
    marker = store.load().state.reboot_guard
    decision = decide_reboot(marker, store.paths.read_boot_id(), config, gpus, allow_reboot, **kw)
    if decision.action is RebootAction.REBOOT:
        assert decision.marker is not None
        arm_marker(store, decision.marker)
    return decision
