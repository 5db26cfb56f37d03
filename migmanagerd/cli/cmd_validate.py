"""``migmanagerd validate``: prove a config file (and hooks file) is usable.

Three questions, no GPU needed:

* no ``--gpu``: is the file well formed, and can every MIG-enabled entry be
  laid out on at least one catalog GPU model its device-filter admits?
  (exit 0 yes, 2 no: a configuration error)
* ``--gpu MODEL``: which configs fit that model, and why the others do not
  (a table, or ``--json``; exit 0)
* ``--gpu MODEL -c NAME``: does config NAME fit? (exit 0 yes, 1 no, 2 usage)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from migmanagerd.catalog.load import Catalog, load_catalog
from migmanagerd.catalog.model import GpuModel
from migmanagerd.cli.common import add_config_file, add_debug, add_hooks_file
from migmanagerd.cli.persisted_args import fill_from_persisted
from migmanagerd.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from migmanagerd.log import get_logger
from migmanagerd.planner.certainty import inferred_profiles, note
from migmanagerd.planner.node import admits, fits_model, missing_indices
from migmanagerd.spec.config import load_config
from migmanagerd.spec.hooks import load_hooks
from migmanagerd.spec.profile import MigProfile
from migmanagerd.spec.types import ConfigEntry, ConfigFile, MigConfig

log = get_logger("validate")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check a config (and hooks) file against the MIG geometry catalog",
        description=(
            "Check config.yaml syntax and that every MIG-enabled entry fits a GPU model its "
            "device-filter admits. With --gpu, report which configs fit that model; with "
            "--gpu and -c, exit 0 if the config fits, 1 if it does not."
        ),
        epilog="Exit codes: 0 valid / fits, 1 does not fit (--gpu with -c), 2 syntax or usage error.",
    )
    add_debug(p)
    add_config_file(p)
    add_hooks_file(p)
    p.add_argument(
        "--gpu", action="append", default=[], metavar="MODEL",
        help="GPU model: catalog name, alias, product name or PCI id (0x20B0, 0x20B010DE); repeatable",
    )
    p.add_argument("-c", "--selected-config", default=None, metavar="NAME", help="check only this config")
    p.add_argument(
        "--gpu-count", type=_gpu_count, metavar="N", default=None,
        help="flag entries naming GPU indices a node with N GPUs lacks (apply and the service skip "
        "them with a warning, as nvidia-mig-parted does); exit 2 if any",
    )
    p.add_argument("--json", action="store_true", help="with --gpu: machine-readable result")
    p.add_argument("--list-models", action="store_true", help="list the catalog's GPU models and exit")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Verdict:
    """Whether one config fits one model."""

    config: str
    model: str
    status: str  # "fits", "no", "n/a" (no entry of the config applies to the model)
    reason: str = ""


def run(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    if args.list_models:
        _print_models(catalog)
        return EXIT_OK
    models = [_find_model(catalog, text) for text in args.gpu]
    fill_from_persisted(args)
    config_file = load_config(args.config_file)
    if args.hooks_file:
        load_hooks(args.hooks_file)
    configs = _select(config_file, args.selected_config)
    if args.gpu_count is not None and _report_index_errors(configs, args.gpu_count):
        return EXIT_USAGE

    if not models:
        errors = [e for c in configs for e in config_errors(c, catalog)]
        for line in errors:
            log.error("%s", line)
        if errors:
            return EXIT_USAGE
        what = f"config '{args.selected_config}'" if args.selected_config else f"{len(configs)} configs"
        hooks = f"; {args.hooks_file}: valid" if args.hooks_file else ""
        print(f"{config_file.path}: {what} valid{hooks}")
        for line in (n for c in configs for n in inferred_notes(c, catalog)):
            print(line)
        return EXIT_OK

    verdicts = [verdict(c, m) for c in configs for m in models]
    if args.json:
        json.dump([v.__dict__ for v in verdicts], sys.stdout, indent=2)
        print()
    else:
        _print_table(verdicts)
    if args.selected_config is None:
        return EXIT_OK
    return EXIT_OK if all(v.status == "fits" for v in verdicts) else EXIT_FAILED


def _gpu_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of GPUs") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}': a node has 0 or more GPUs")
    return value


def index_errors(config: MigConfig, gpu_count: int) -> list[str]:
    """One line per entry naming GPU indices a node of ``gpu_count`` GPUs lacks."""
    present = range(gpu_count)
    lines = []
    for e in config.entries:
        missing = missing_indices(e, present)
        if missing:
            lines.append(
                f"{e.where}: devices: GPU index{'es' if len(missing) > 1 else ''} "
                f"{', '.join(map(str, missing))} not on a node with {gpu_count} GPU(s) "
                "(apply and the service skip them with a warning)"
            )
    return lines


def _report_index_errors(configs: Sequence[MigConfig], gpu_count: int) -> bool:
    absent = [line for c in configs for line in index_errors(c, gpu_count)]
    for line in absent:
        log.error("%s", line)
    return bool(absent)


def _find_model(catalog: Catalog, text: str) -> GpuModel:
    model = catalog.find(text)
    if model is None:
        raise UsageError(f"--gpu {text}: unknown GPU model (known: {', '.join(catalog.names)})")
    return model


def _select(config_file: ConfigFile, name: str | None) -> list[MigConfig]:
    if name is None:
        return list(config_file.configs.values())
    if name not in config_file.configs:
        raise UsageError(
            f"{config_file.path}: config '{name}' not found (it has: {', '.join(config_file.configs)})"
        )
    return [config_file.configs[name]]


def entry_fits(entry: ConfigEntry, model: GpuModel) -> str | None:
    """None when the entry fits ``model``, else the planner's reason."""
    return fits_model(entry, model)


def verdict(config: MigConfig, model: GpuModel) -> Verdict:
    applying = [e for e in config.entries if admits(e, model)]
    if not applying:
        return Verdict(config.name, model.name, "n/a", "no entry's device-filter admits this model")
    for e in applying:
        reason = entry_fits(e, model)
        if reason is not None:
            return Verdict(config.name, model.name, "no", f"entry {e.position} (line {e.loc.line}): {reason}")
    inferred = inferred_profiles(model, (p for e in applying for p, _ in e.mig_devices))
    if inferred:
        return Verdict(config.name, model.name, "fits", f"on unconfirmed placements (catalog confirmed: false): {', '.join(inferred)}")
    return Verdict(config.name, model.name, "fits")


def inferred_notes(config: MigConfig, catalog: Catalog) -> list[str]:
    """One note per entry and model it fits only on profiles the catalog flags ``confirmed: false``."""
    lines = []
    for e in config.entries:
        if not e.mig_enabled or not e.mig_devices:
            continue
        for m in catalog.models:
            if admits(e, m) and entry_fits(e, m) is None:
                names = inferred_profiles(m, (p for p, _ in e.mig_devices))
                if names:
                    lines.append(note(e.where, m, names))
    return lines


def config_errors(config: MigConfig, catalog: Catalog) -> list[str]:
    """One line per MIG-enabled entry that no admitted catalog model can hold."""
    errors = []
    for e in config.entries:
        if not e.mig_enabled:
            continue
        candidates = [m for m in catalog.models if admits(e, m)]
        if not candidates:
            filters = ", ".join(str(f) for f in e.device_filters)
            errors.append(
                f"{e.where}: no GPU model in the catalog matches device-filter {filters}, "
                "so its MIG geometry cannot be checked"
            )
            continue
        reasons = [(m, entry_fits(e, m)) for m in candidates]
        if any(r is None for _, r in reasons):
            continue
        errors.append(f"{e.where}: fits no GPU model its device-filter admits: {_best_reason(e, reasons)}")
    return errors


def _best_reason(entry: ConfigEntry, reasons: Sequence[tuple[GpuModel, str | None]]) -> str:
    """The reason from the closest model: one that has every profile named, if any."""
    wanted = {p.gi_name for p, _ in entry.mig_devices}
    for model, reason in reasons:
        if all(model.gi_profile(n) is not None for n in wanted):
            return reason or ""
    missing = sorted(wanted, key=lambda n: MigProfile.parse(n))
    return f"no catalog model has all of {', '.join(missing)}"


def _print_table(verdicts: Sequence[Verdict]) -> None:
    rows = [("CONFIG", "MODEL", "FITS", "REASON")] + [
        (v.config, v.model, v.status, v.reason) for v in verdicts
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip())


def _print_models(catalog: Catalog) -> None:
    for m in catalog.models:
        ids = ", ".join(f"0x{d:04X}" for d in m.device_ids) or "-"
        flag = "" if all(p.confirmed for p in m.gi_profiles) else "  (partly inferred)"
        print(f"{m.name:<24} {ids}{flag}")
