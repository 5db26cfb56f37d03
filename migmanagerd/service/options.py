"""What a boot-time run is asked to do, and what it answers."""

from __future__ import annotations

from dataclasses import dataclass

from migmanagerd.service.state import RunResult


@dataclass(frozen=True)
class ServiceOptions:
    config_file: str | None = None  # None: NodePaths.config_file
    hooks_file: str | None = None  # None: NodePaths.hooks_file when it exists
    selected_config: str | None = None  # -c
    mode_only: bool = False
    skip_reset: bool = False
    allow_reboot: bool = True
    persist_selection: bool = False  # `apply -c NAME`: make NAME the boot-time selection on success
    hook_timeout_s: float = 120.0
    backend: str | None = None
    # False when -f names another file than the persisted one: the name state.json
    # recorded belongs to that other file, so it must not pick a config here
    name_fallback: bool = True


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    result: RunResult
    message: str

