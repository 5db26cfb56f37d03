"""Simulator knobs: per-operation latency and fault injection.

Latency ``create_gi=0.2,reset=2`` (seconds per call; stored in the state by
``sim init --latency`` and overridable per operation by env
``MIGMANAGERD_SIM_LATENCY``).

Faults, env ``MIGMANAGERD_SIM_FAULTS``, comma-separated rules
``OP[@GPU]:N`` or ``OP[@GPU]:*``: ``create_gi:3`` fails the 3rd create_gi
this process makes (on any GPU), ``create_gi@2:1`` the 1st create_gi on GPU 2,
``reset:*`` every reset. Calls are counted per process, so a test can tell
exactly which call fails; a failed call changes nothing.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass

from migmanagerd.errors import UsageError
from migmanagerd.gpu.sim_state import OPERATIONS

LATENCY_ENV = "MIGMANAGERD_SIM_LATENCY"
FAULTS_ENV = "MIGMANAGERD_SIM_FAULTS"
FAULT_CODE = "SIM_FAULT_INJECTED"

_FAULT = re.compile(r"^(?P<op>[a-z_]+)(?:@(?P<gpu>\d+))?:(?P<nth>\*|\d+)$")


def _known_op(op: str, where: str) -> str:
    if op not in OPERATIONS:
        raise UsageError(f"{where}: unknown operation '{op}' (known: {', '.join(OPERATIONS)})")
    return op


def parse_latency(text: str, where: str = "latency") -> dict[str, float]:
    """``create_gi=0.2,reset=2`` -> {"create_gi": 0.2, "reset": 2.0}."""
    out: dict[str, float] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        op, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"{where}: '{item}' is not OP=SECONDS (e.g. create_gi=0.2)")
        _known_op(op.strip(), where)
        try:
            seconds = float(value)
        except ValueError:
            raise UsageError(f"{where}: '{item}': '{value}' is not a number of seconds") from None
        if not seconds >= 0 or seconds == float("inf"):
            raise UsageError(f"{where}: '{item}': seconds must be a finite number >= 0")
        out[op.strip()] = seconds
    return out


@dataclass(frozen=True)
class FaultRule:
    op: str
    gpu: int | None  # None: any GPU, counting calls on all GPUs together
    nth: int | None  # None ("*"): every call

    def __str__(self) -> str:
        where = f"@{self.gpu}" if self.gpu is not None else ""
        return f"{self.op}{where}:{'*' if self.nth is None else self.nth}"


def parse_faults(text: str, where: str = FAULTS_ENV) -> tuple[FaultRule, ...]:
    rules = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        m = _FAULT.match(item)
        if m is None:
            raise UsageError(f"{where}: '{item}' is not OP[@GPU]:N or OP[@GPU]:* (e.g. create_gi:3, reset:*, create_gi@2:1)")
        nth = None if m["nth"] == "*" else int(m["nth"])
        if nth == 0:
            raise UsageError(f"{where}: '{item}': calls are counted from 1")
        rules.append(FaultRule(_known_op(m["op"], where), int(m["gpu"]) if m["gpu"] else None, nth))
    return tuple(rules)


class FaultCounter:
    """Counts this process's calls per operation (all GPUs, and per GPU)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, int | None], int] = {}

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()

    def hit(self, op: str, gpus: tuple[int, ...], rules: tuple[FaultRule, ...]) -> FaultRule | None:
        """Count one call of ``op`` touching ``gpus``; return the rule that fires, if any."""
        with self._lock:
            any_n = self._calls[(op, None)] = self._calls.get((op, None), 0) + 1
            per_gpu = {}
            for g in gpus:
                per_gpu[g] = self._calls[(op, g)] = self._calls.get((op, g), 0) + 1
        for rule in rules:
            if rule.op != op:
                continue
            if rule.gpu is None:
                if rule.nth is None or rule.nth == any_n:
                    return rule
            elif rule.gpu in per_gpu and (rule.nth is None or rule.nth == per_gpu[rule.gpu]):
                return rule
        return None


# One per process: "the 3rd create_gi call made by this process".
PROCESS_FAULTS = FaultCounter()


def env_faults() -> tuple[FaultRule, ...]:
    return parse_faults(os.environ.get(FAULTS_ENV, ""))


def env_latency() -> dict[str, float]:
    return parse_latency(os.environ.get(LATENCY_ENV, ""), LATENCY_ENV)
