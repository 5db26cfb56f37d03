"""``select``: make a config the one every boot applies, or refuse.

The selection only counts if the next boot can apply it, so ``select``
refuses (exit 2, the drop-in untouched) whatever that boot would refuse: a
config or hooks file that is missing, untrusted or invalid, a name the file
lacks, a config that selects no GPU of this node or does not fit it. The
drop-in keeps the config and hooks files it names unless ``-f``/``-k`` name
others, so a selection never silently moves to another file's config of the
same name. After systemd reloads, the unit's ``Environment`` is read back over
D-Bus: a selection systemd did not take (another drop-in overriding ours, a
hand edit it reads differently) is reported as a failure (exit 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from migmanagerd.apply.coverage import require_selects_gpu
from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.apply.nodeplan import require_feasible
from migmanagerd.catalog.load import load_catalog
from migmanagerd.clients.systemd import SystemdManager
from migmanagerd.errors import MigManagerError, UsageError
from migmanagerd.gpu.factory import open_backend
from migmanagerd.log import get_logger
from migmanagerd.service.inputs import load_inputs
from migmanagerd.service.options import ServiceOptions
from migmanagerd.service.paths import NodePaths
from migmanagerd.service.selector import OWNED_VARS, read_selector, validate_config_name, write_selector
from migmanagerd.service.state import StateStore
from migmanagerd.service.unit_env import UNIT, confirm_unit_environment
from migmanagerd.spec.config import STDIN_PATH

log = get_logger("select")


@dataclass(frozen=True)
class SelectRequest:
    name: str
    config_file: str | None = None  # -f (or MIG_PARTED_CONFIG_FILE); None: keep the drop-in's
    hooks_file: str | None = None  # -k (or MIG_PARTED_HOOKS_FILE); None: keep the drop-in's
    check_fit: bool = True
    reload: bool = True
    backend: str | None = None


@dataclass(frozen=True)
class SelectResult:
    name: str
    dropin: Path
    changed: bool
    config_file: str | None  # as written to the drop-in; None: the default
    hooks_file: str | None
    confirmed: bool | None = None  # the unit's Environment holds the selection; None: not checked
    notes: list[str] = field(default_factory=list)  # why not confirmed, or what differs


def _files(request: SelectRequest, paths: NodePaths) -> tuple[str | None, str | None]:
    """The config and hooks files the drop-in will name (None: the default)."""
    current = read_selector(paths.dropin)
    config_file = request.config_file or current.config_file
    hooks_file = request.hooks_file or current.hooks_file
    if config_file == STDIN_PATH:
        raise UsageError("select -f -: a config on standard input cannot be selected for every boot; save it to a file")
    if config_file is not None and Path(config_file) == paths.config_file:
        config_file = None
    if hooks_file is not None and Path(hooks_file) == paths.hooks_file:
        hooks_file = None
    return config_file, hooks_file


def _check_boot_inputs(name: str, config_file: str | None, hooks_file: str | None, paths: NodePaths,
                       check_fit: bool, backend: str | None) -> None:
    """Load every file the boot loads, as the boot loads it (trust checks
    included), and plan the config against this node."""
    # the boot's own loader, so select and the boot cannot disagree
    opts = ServiceOptions(config_file=config_file, hooks_file=hooks_file, selected_config=name)
    config = load_inputs(opts, paths, None).config
    if not check_fit:
        return
    engine = ApplyEngine(open_backend(backend))
    try:
        state = engine.observe()
        require_selects_gpu(config, state, load_catalog())
        require_feasible(engine.plan(config, state=state))
    finally:
        engine.backend.close()


def select_config(
    request: SelectRequest,
    paths: NodePaths | None = None,
    *,
    connect_systemd: Callable[[], Any] | None = None,
) -> SelectResult:
    paths = paths or NodePaths.from_env()
    name = validate_config_name(request.name)
    config_file, hooks_file = _files(request, paths)
    _check_boot_inputs(name, config_file, hooks_file, paths, request.check_fit, request.backend)
    changed = write_selector(paths.dropin, name, config_file, hooks_file)
    StateStore(paths).update(lambda s: replace(s, selected_config=name))
    result = SelectResult(name, paths.dropin, changed, config_file, hooks_file)
    if not request.reload:
        return result
    return _reload_and_confirm(result, connect_systemd or _default_connect)


def _default_connect() -> SystemdManager:
    return SystemdManager.connect()


def _reload_and_confirm(result: SelectResult, connect: Callable[[], Any]) -> SelectResult:
    expected = {k: v for k, v in read_selector(result.dropin).environment.items() if k in OWNED_VARS}
    try:
        manager = connect()
    except MigManagerError as exc:
        return replace(result, notes=[f"systemd was not reloaded ({exc}); run: systemctl daemon-reload"])
    try:
        if result.changed:
            manager.reload()
        if manager.unit(UNIT).load_state != "loaded":
            return replace(result, notes=[f"{UNIT} is not loaded, so its environment could not be checked"])
        differences = confirm_unit_environment(manager, expected)
        if differences and not result.changed:
            # a hand edit nobody reloaded yet: reload once and look again
            manager.reload()
            differences = confirm_unit_environment(manager, expected)
    except MigManagerError as exc:
        return replace(result, notes=[f"could not reload systemd or read {UNIT} ({exc}); run: systemctl daemon-reload"])
    finally:
        manager.close()
    return replace(result, confirmed=not differences, notes=differences)
