"""MIG layouts as pictures in the terminal: one row per GPU, memory slices as columns.

::

    slot                    0         1         2         3         4         5         6         7
    GPUs 0-5 A100-SXM4-40GB [3g.20gb                               ][2g.10gb           ][1g.5gb  ]..........

Each memory slice is ``SLOT_WIDTH`` columns; an instance is a box over its
slices, labelled with its profile and a mark: ``+`` created, ``-`` destroyed,
``*`` a process runs on it, ``@`` leased, ``>`` handed out now. Identical GPUs
(same model, same boxes) share one row. With colour (a terminal, no
``--no-color``, no ``NO_COLOR``) boxes are also coloured; without, the
picture is plain ASCII. Pure: callers decide when to draw.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from migmanagerd.apply.nodeplan import NodePlan
from migmanagerd.apply.observe import GpuView, NodeState
from migmanagerd.planner.types import GpuPlan, MigDevice

SLOT_WIDTH = 10

KEEP = ""
CREATE = "+"
DESTROY = "-"
BUSY = "*"
LEASED = "@"
HANDED = ">"

_COLOURS = {KEEP: "47;30", CREATE: "42;30", DESTROY: "41;97", BUSY: "43;30", LEASED: "46;30", HANDED: "45;97"}
LEGEND = "marks: + created  - destroyed  * process on it  @ leased  > handed out now  . free slice"


@dataclass(frozen=True)
class Box:
    start: int
    size: int
    label: str
    mark: str = KEEP


@dataclass(frozen=True)
class Row:
    index: int
    model: str
    slices: int
    lines: tuple[tuple[str, tuple[Box, ...]], ...]  # (caption, boxes) per line, e.g. ("now", …), ("new", …)

    def shape(self) -> tuple[object, ...]:
        return (self.model, self.slices, self.lines)


def use_color(no_color: bool = False, stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    return not no_color and not os.environ.get("NO_COLOR") and stream.isatty()


def index_ranges(indices: Sequence[int]) -> str:
    out: list[str] = []
    run: list[int] = []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def _box_text(box: Box, colour: bool) -> str:
    width = box.size * SLOT_WIDTH
    inner = (box.mark + box.label)[: width - 2].ljust(width - 2)
    text = f"[{inner}]"
    if colour:
        return f"\x1b[{_COLOURS.get(box.mark, '47;30')}m{text}\x1b[0m"
    return text


def _slots(slices: int, boxes: Iterable[Box], colour: bool) -> str:
    by_start = {b.start: b for b in boxes}
    out = []
    i = 0
    while i < slices:
        box = by_start.get(i)
        if box is not None and box.size > 0:
            out.append(_box_text(box, colour))
            i += box.size
        else:
            out.append("." * SLOT_WIDTH)
            i += 1
    return "".join(out)


def draw(rows: Sequence[Row], colour: bool = False, legend: bool = True) -> list[str]:
    """The picture: a slot ruler, then one row (or a group of identical rows) per GPU."""
    groups: list[tuple[list[int], Row]] = []
    for row in rows:
        if groups and groups[-1][1].shape() == row.shape():
            groups[-1][0].append(row.index)
        else:
            groups.append(([row.index], row))
    heads = [(f"GPU{'s' if len(ix) > 1 else ''} {index_ranges(ix)}", row) for ix, row in groups]
    head_w = max((len(h) for h, _ in heads), default=4)
    model_w = max((len(r.model) for _, r in heads), default=0)
    cap_w = max((len(c) for _, r in heads for c, _ in r.lines), default=0)
    lead = head_w + 1 + model_w + 1 + (cap_w + 1 if cap_w else 0)
    out: list[str] = []
    ruler_for = None
    for head, row in heads:
        if row.slices != ruler_for:
            ruler_for = row.slices
            out.append("slot".ljust(lead) + "".join(f"{i:<{SLOT_WIDTH}}" for i in range(row.slices)).rstrip())
        for n, (caption, boxes) in enumerate(row.lines):
            left = f"{head:<{head_w}} {row.model:<{model_w}} " if n == 0 else " " * (head_w + model_w + 2)
            cap = f"{caption:<{cap_w}} " if cap_w else ""
            out.append(left + cap + _slots(row.slices, boxes, colour))
    if legend:
        out.append(LEGEND)
    return out


# ----------------------------------------------------------------- from the engine's data


def _box(d: MigDevice, mark: str) -> Box:
    return Box(d.placement.start, d.placement.size, d.profile, mark)


def _slices(view: GpuView) -> int:
    return view.model.memory_slices if view.model is not None else 8


def node_rows(state: NodeState, marks: Mapping[str, str] | None = None) -> list[Row]:
    """The node as it is; ``marks`` maps a MIG device UUID to its mark (busy, leased…)."""
    marks = marks or {}
    rows = []
    for view in state.gpus:
        if not view.mig_capable:
            continue
        if not view.mode.current:
            rows.append(Row(view.index, view.model_name, _slices(view), (("MIG off", ()),)))
            continue
        boxes = tuple(_box(d, marks.get(d.uuid or "", KEEP)) for d in view.devices)
        rows.append(Row(view.index, view.model_name, _slices(view), (("", boxes),)))
    return rows


def change_row(view: GpuView, plan: GpuPlan, marks: Mapping[str, str] | None = None,
               handed: Iterable[tuple[int, str]] = ()) -> Row:
    """Before (destroyed marked ``-``) and after (created ``+``) of one GPU."""
    marks = marks or {}
    handed_at = set(handed)
    destroyed = {id(d) for d in plan.destroy}
    now = tuple(
        _box(d, DESTROY if id(d) in destroyed else marks.get(d.uuid or "", KEEP)) for d in view.devices
    )
    after = []
    for d in plan.keep:
        mark = HANDED if (d.placement.start, d.profile) in handed_at else marks.get(d.uuid or "", KEEP)
        after.append(_box(d, mark))
    for d in plan.create:
        after.append(_box(d, HANDED if (d.placement.start, d.profile) in handed_at else CREATE))
    return Row(view.index, view.model_name, _slices(view), (("now", now), ("new", tuple(after))))


def plan_rows(plan: NodePlan, state: NodeState) -> list[Row]:
    rows = []
    for entry in plan.gpus:
        view = state.gpu(entry.index)
        if not view.mig_capable:
            continue
        result = entry.result
        if isinstance(result, GpuPlan):
            rows.append(change_row(view, result))
        else:
            caption = "not selected" if result is None else "does not fit"
            boxes = tuple(_box(d, KEEP) for d in view.devices)
            rows.append(Row(view.index, view.model_name, _slices(view), ((caption, boxes),)))
    return rows


def request_rows(state: NodeState, plans: Mapping[int, GpuPlan], marks: Mapping[str, str],
                 handed: Iterable[tuple[int, int, str]]) -> list[Row]:
    """``request --dry-run``: changed GPUs before/after, the others as they are; ``>`` marks what is handed out."""
    handed = set(handed)
    rows = []
    for view in state.gpus:
        if not view.mig_capable:
            continue
        mine = [(s, p) for g, s, p in handed if g == view.index]
        if view.index in plans:
            rows.append(change_row(view, plans[view.index], marks, mine))
            continue
        row_marks = dict(marks)
        for d in view.devices:
            if (d.placement.start, d.profile) in mine and d.uuid:
                row_marks[d.uuid] = HANDED
        rows.extend(node_rows(NodeState((view,)), row_marks))
    return rows


def json_rows(gpus: Sequence[Mapping[str, object]], marks: Mapping[str, str] | None = None) -> list[Row]:
    """Rows from ``status --json``'s ``gpus`` (the same shape as ``export --json``)."""
    from migmanagerd.catalog.load import load_catalog

    catalog = load_catalog()
    marks = marks or {}
    rows = []
    for g in gpus:
        model_name = g.get("model")
        if not isinstance(model_name, str):
            continue
        model = catalog.get(model_name)
        slices = model.memory_slices if model is not None else 8
        index = int(g["index"])  # type: ignore[call-overload]
        if not g.get("mig_enabled"):
            rows.append(Row(index, model_name, slices, (("MIG off", ()),)))
            continue
        boxes = []
        for inst in g.get("instances") or ():  # type: ignore[attr-defined]
            uuid = inst.get("uuid") or ""
            boxes.append(Box(int(inst["start"]), int(inst["size"]), str(inst["profile"]), marks.get(uuid, KEEP)))
        rows.append(Row(index, model_name, slices, (("", tuple(boxes)),)))
    return rows


def add_picture_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--picture", action="store_true", help="draw the layout even when the output is not a terminal")
    p.add_argument("--no-color", action="store_true", help="draw without colours (also env NO_COLOR)")


def picture_wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "picture", False)) or sys.stdout.isatty()
