"""The few ``scontrol`` calls the drain needs, behind one small class.

Arguments go to scontrol as separate argv elements (``Reason=text with spaces``
is one element), so no shell quoting is involved. ``-o`` asks for one line per
record; the fields read here are ``State=`` (base state, then ``+FLAG``s, e.g.
``MIXED+DRAIN``), ``CPUAlloc=`` and ``Reason=`` (which scontrol prints with a
``[user@time]`` suffix that is dropped here).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from migmanagerd.errors import MigManagerError
from migmanagerd.proctree import run_bounded

# Base states in which jobs still hold resources on the node.
BUSY_STATES = frozenset({"ALLOCATED", "MIXED", "COMPLETING"})

_STATE = re.compile(r"(?:^|\s)State=(\S+)")
_CPU_ALLOC = re.compile(r"(?:^|\s)CPUAlloc=(\d+)")
_REASON = re.compile(r"(?:^|\s)Reason=(.*?)(?:\s+\[[^\]]*\])?(?=\s+[A-Z][A-Za-z]*=|\s*$)")


class ScontrolError(MigManagerError):
    """scontrol failed or could not be run (slurmctld unreachable, node unknown…)."""


@dataclass(frozen=True)
class NodeStatus:
    name: str
    base_state: str
    flags: frozenset[str]
    cpu_alloc: int
    reason: str | None

    @property
    def drained(self) -> bool:
        """DRAIN flag set (Slurm shows DRAINING while jobs run, DRAINED after)."""
        return "DRAIN" in self.flags

    @property
    def busy(self) -> bool:
        """True while any job still runs or completes on the node."""
        return self.base_state in BUSY_STATES or "COMPLETING" in self.flags or self.cpu_alloc > 0

    @property
    def state(self) -> str:
        return "+".join([self.base_state, *sorted(self.flags)])


def parse_show_node(name: str, text: str) -> NodeStatus:
    state_m = _STATE.search(text)
    if state_m is None:
        raise ScontrolError(f"scontrol show node {name}: no State= in output: {text.strip()[:200]!r}")
    base, *flags = state_m.group(1).upper().split("+")
    alloc_m = _CPU_ALLOC.search(text)
    reason_m = _REASON.search(text)
    reason = reason_m.group(1).strip() if reason_m else None
    if reason in ("", "(null)", "None"):
        reason = None
    return NodeStatus(name, base.rstrip("*~#$@^%!"), frozenset(flags), int(alloc_m.group(1)) if alloc_m else 0, reason)


Runner = Callable[..., subprocess.CompletedProcess[str]]


class Scontrol:
    def __init__(self, binary: str = "scontrol", *, timeout_s: float = 30, run: Runner = run_bounded) -> None:
        self._binary = binary
        self._timeout_s = timeout_s
        self._run = run

    def _call(self, args: Sequence[str]) -> str:
        argv = [self._binary, *args]
        what = " ".join(args[:3])
        try:
            proc = self._run(argv, capture_output=True, text=True, timeout=self._timeout_s, check=False)
        except FileNotFoundError:
            raise ScontrolError(f"scontrol {what}: '{self._binary}' not found (is slurm-client installed?)") from None
        except subprocess.TimeoutExpired:
            raise ScontrolError(f"scontrol {what}: no answer within {self._timeout_s:g}s (slurmctld unreachable?)") from None
        except OSError as exc:
            raise ScontrolError(f"scontrol {what}: cannot run '{self._binary}': {exc.strerror or exc}") from None
        if proc.returncode != 0:
            detail = " ".join((proc.stderr or proc.stdout or "").split())[:300]
            raise ScontrolError(f"scontrol {what}: exit {proc.returncode}: {detail or 'no message'}")
        return proc.stdout or ""

    def show_node(self, name: str) -> NodeStatus:
        return parse_show_node(name, self._call(["-o", "show", "node", name]))

    def drain(self, name: str, reason: str) -> None:
        """Set DRAIN with ``reason``; on a node already drained it replaces the reason."""
        self._call(["update", f"NodeName={name}", "State=DRAIN", f"Reason={reason}"])

    def resume(self, name: str) -> None:
        self._call(["update", f"NodeName={name}", "State=RESUME"])
