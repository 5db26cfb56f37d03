"""``migmanagerd plan``: what ``apply`` would do, per GPU, without touching anything.

Exit 0 when the config fits (whether or not anything would change), 2 when it
does not fit some GPU (the reasons are printed, or listed under "errors").
"""

from __future__ import annotations

import argparse
import json

from migmanagerd.apply.nodeplan import GpuPlanEntry, NodePlan
from migmanagerd.cli.common import add_backend, add_config_file, add_debug, add_mode_only, add_selected_config
from migmanagerd.cli.persisted_args import fill_from_persisted
from migmanagerd.cli.picture import add_picture_options, picture_wanted
from migmanagerd.cli.selection import load_selection, open_engine
from migmanagerd.errors import EXIT_OK, EXIT_USAGE
from migmanagerd.planner.types import GpuPlan, Infeasible, MigDevice

# The engine and renderers are imported when a command runs, so `--help`
# and the other commands work whatever state those modules are in.


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "plan",
        help="show what apply would change, per GPU",
        description="Print the per-GPU plan for the selected config (keep/destroy/create with placements). "
        "Exit 0 when it fits, 2 when it does not fit (nothing is ever changed).",
    )
    add_config_file(p)
    add_selected_config(p)
    add_mode_only(p, "plan")
    p.add_argument("--json", action="store_true", help="machine-readable output (keys in docs/engine.md)")
    add_picture_options(p)
    add_backend(p)
    add_debug(p)
    p.set_defaults(func=run)


def _devs(devices: tuple[MigDevice, ...]) -> str:
    return ", ".join(f"{d.profile}@{d.placement.start}" for d in devices)


def _onoff(flag: bool | None) -> str:
    return {True: "enabled", False: "disabled", None: "-"}[flag]


def format_plan(plan: NodePlan) -> list[str]:
    return [f"config '{plan.config}':", *(_gpu_line(e) for e in plan.gpus)]


def _gpu_line(e: GpuPlanEntry) -> str:
    head = f"GPU {e.index} ({e.model})"
    if not e.selected:
        return f"{head}: not selected by this config; left as is"
    mode = f"MIG {_onoff(e.mode_current)}"
    if e.mode_pending != e.mode_current:
        mode += f" ({_onoff(e.mode_pending)} pending)"
    if e.needs_mode_change:
        mode += f" -> {_onoff(e.mode_target)}"
    r = e.result
    if isinstance(r, Infeasible):
        return f"{head}: {mode}; does not fit: {r.reason}"
    parts = [mode]
    if isinstance(r, GpuPlan):
        parts += _changes(r)
        if r.is_noop and not e.needs_mode_change:
            parts.append("no change")
    return f"{head}: " + "; ".join(parts)


def _changes(r: GpuPlan) -> list[str]:
    parts = []
    if r.keep:
        parts.append(f"keep {_devs(r.keep)}")
    if r.destroy:
        parts.append(f"destroy {_devs(r.destroy)}")
    if r.adjust:  # kept GPU instances whose compute instances change
        parts.append("change " + ", ".join(f"{a.current.profile}@{a.current.placement.start} -> {a.target.profile}" for a in r.adjust))
    if r.create:
        parts.append(f"create {_devs(r.create)}")
    return parts


def inferred_plan_notes(plan: NodePlan) -> list[str]:
    """A note per GPU whose target layout uses profiles the catalog flags ``confirmed: false``."""
    from migmanagerd.catalog.load import load_catalog
    from migmanagerd.planner.certainty import inferred_profiles, note

    catalog = load_catalog()
    lines = []
    for e in plan.gpus:
        model = catalog.get(e.model) if e.selected and e.feasible and not e.mode_only else None
        names = inferred_profiles(model, (p for p, _ in e.target_devices)) if model is not None else ()
        if model is not None and names:
            lines.append(note(f"GPU {e.index}", model, names))
    return lines


def run(args: argparse.Namespace) -> int:
    persisted = fill_from_persisted(args)
    _, config = load_selection(args, fallback=lambda: persisted.fallback)
    engine = open_engine(args)
    try:
        state = engine.observe()
        plan = engine.plan(config, mode_only=args.mode_only, state=state)
    finally:
        engine.backend.close()
    if args.json:
        from migmanagerd.apply.render import plan_json

        print(json.dumps(plan_json(plan), indent=2))
    else:
        for line in format_plan(plan) + inferred_plan_notes(plan):
            print(line)
        if picture_wanted(args):
            from migmanagerd.cli.picture import draw, plan_rows, use_color

            print()
            print("\n".join(draw(plan_rows(plan, state), use_color(args.no_color))))
        if not plan.feasible:
            print(f"config '{plan.config}' does not fit this node")
    return EXIT_OK if plan.feasible else EXIT_USAGE
