"""A node_exporter textfile-collector file describing the node's MIG state.

Written after every run (whether or not anything changed), atomically, because
node_exporter may read the directory at any moment. The format is Prometheus'
text exposition format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/),
written here directly: it is a few lines of escaping, smaller than a dependency.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from migmanagerd.atomic_file import write_text_atomic
from migmanagerd.integrations.layout import NodeLayout, RunSummary

PREFIX = "migmanagerd"


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Metric:
    name: str
    help: str
    samples: tuple[Sample, ...]
    type: str = "gauge"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {_escape_help(m.help)}")
        lines.append(f"# TYPE {m.name} {m.type}")
        for s in m.samples:
            if s.labels:
                inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in s.labels.items())
                lines.append(f"{m.name}{{{inner}}} {_format_value(s.value)}")
            else:
                lines.append(f"{m.name} {_format_value(s.value)}")
    return "\n".join(lines) + "\n"


def _one(name: str, help: str, value: float, **labels: str) -> Metric:
    return Metric(f"{PREFIX}_{name}", help, (Sample(labels, value),))


def node_metrics(layout: NodeLayout, summary: RunSummary, *, now: float) -> list[Metric]:
    gpus = sorted(layout.gpus, key=lambda g: g.index)
    out = []
    if summary.config is not None:
        out.append(_one("selected_config_info", "The MIG config selected for this node (value is always 1).",
                        1, config=summary.config))
    out.append(_one("node_matches", "1 when every GPU's MIG layout is the selected config's, else 0.",
                    int(summary.matched)))
    out.append(Metric(
        f"{PREFIX}_gpu_mig_enabled", "1 when MIG mode is enabled on the GPU.",
        tuple(Sample({"gpu": str(g.index), "model": g.model, "uuid": g.uuid}, int(g.mig_enabled)) for g in gpus),
    ))
    per_profile: list[Sample] = []
    for g in gpus:
        counts = Counter(d.profile for d in g.devices)
        per_profile.extend(Sample({"gpu": str(g.index), "profile": p}, n) for p, n in sorted(counts.items()))
    out.append(Metric(f"{PREFIX}_gpu_mig_devices", "MIG devices on the GPU, per profile.", tuple(per_profile)))
    out.append(_one("last_run_success", "1 when the last run left the node as selected.", int(summary.ok)))
    out.append(_one("last_run_result_info", "Result of the last run (value is always 1).", 1, result=summary.result))
    out.append(_one("last_run_changed", "1 when the last run changed any MIG mode or instance.", int(summary.changed)))
    out.append(_one("last_run_duration_seconds", "How long the last run took.", float(summary.duration_s)))
    out.append(_one("last_run_clients_stopped", "GPU client units the last run stopped (and restarted).",
                    int(summary.clients_stopped)))
    out.append(Metric(
        f"{PREFIX}_last_run_operations", "Operations the last run performed, per kind.",
        tuple(Sample({"operation": k}, int(v)) for k, v in sorted(summary.operations.items())),
    ))
    out.append(_one("last_run_timestamp_seconds", "When the last run finished, in seconds since the epoch.",
                    float(now)))
    return out


def write_metrics(path: str, layout: NodeLayout, summary: RunSummary, *, now: float | None = None) -> dict[str, Any]:
    text = render(node_metrics(layout, summary, now=time.time() if now is None else now))
    write_text_atomic(path, text)
    return {"path": path, "status": "ok"}
