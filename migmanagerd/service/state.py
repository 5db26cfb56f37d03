"""The service's persistent state: ``/var/lib/nvidia-mig-manager/state.json``.

One small JSON document (schema in docs/state.md) that holds

* the config last selected/applied (the fallback in the selection precedence),
* the result of the last run,
* the in-flight journal: written BEFORE the first GPU client is stopped and
  updated after each stop, so a run killed half-way (power cut, OOM kill,
  TimeoutStartSec) leaves behind exactly which units the next run must start
  again,
* the reboot guard marker (see reboot_guard.py),
* a free-form object for the integrations.

Guarantees: every write is atomic (migmanagerd.atomic_file.write_atomic), and reading never
raises and never blocks the boot: a file that cannot be used is moved aside to
``state.json.corrupt-<UTC timestamp>`` and the run goes on with an empty state.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from migmanagerd.atomic_file import cleanup_temp_files, write_atomic
from migmanagerd.errors import MigManagerError
from migmanagerd.file_lock import LockTimeout, acquire
from migmanagerd.log import get_logger
from migmanagerd.service.paths import NodePaths

log = get_logger("state")

STATE_VERSION = 1
STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600
LOCK_FILE_NAME = ".lock"
# A writer holds the lock only for one read-modify-write; if it is held longer
# something is stuck, and the boot must not wait on it.
LOCK_TIMEOUT_S = 10.0

RunResult = Literal["ok", "failed", "reboot-required"]
RUN_RESULTS: tuple[str, ...] = ("ok", "failed", "reboot-required")


def utc_now() -> str:
    """Timestamps in state.json: ISO 8601, UTC, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LastRun:
    config: str
    started_at: str
    finished_at: str | None
    result: RunResult
    exit_code: int
    gpus: dict[str, dict[str, Any]] = field(default_factory=dict)  # GPU index (as str) -> result
    message: str = ""


@dataclass(frozen=True)
class Journal:
    """A run in flight. ``stopped_units`` is in RESTART order: the unit stopped
    last comes first (what depends on the GPU most directly starts first)."""

    config: str
    phase: str
    started_at: str
    pid: int
    stopped_units: tuple[str, ...] = ()
    boot_id: str = ""

    @property
    def stop_order(self) -> tuple[str, ...]:
        return tuple(reversed(self.stopped_units))


@dataclass(frozen=True)
class RebootMarker:
    """A reboot this service requested to switch MIG mode (see reboot_guard.py)."""

    config: str
    armed_at: str
    boot_id: str
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class State:
    version: int = STATE_VERSION
    selected_config: str | None = None
    last_run: LastRun | None = None
    journal: Journal | None = None
    reboot_guard: RebootMarker | None = None
    integrations: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadResult:
    state: State
    problem: str | None = None  # why the file on disk could not be used (it was moved aside)


class StateFormatError(ValueError):
    """state.json parsed as JSON but does not match the schema."""


# --- JSON <-> dataclasses (pure) -------------------------------------------


def state_to_json(state: State) -> str:
    doc = {
        "version": state.version,
        "selected_config": state.selected_config,
        "last_run": None if state.last_run is None else asdict(state.last_run),
        "journal": None if state.journal is None else _journal_doc(state.journal),
        "reboot_guard": None if state.reboot_guard is None else _marker_doc(state.reboot_guard),
        "integrations": state.integrations,
    }
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def _journal_doc(j: Journal) -> dict[str, Any]:
    d = asdict(j)
    d["stopped_units"] = list(j.stopped_units)
    return d


def _marker_doc(m: RebootMarker) -> dict[str, Any]:
    d = asdict(m)
    d["gpus"] = list(m.gpus)
    return d


def _get(doc: dict[str, Any], where: str, key: str, types: tuple[type, ...], default: Any = ...) -> Any:
    if key not in doc:
        if default is ...:
            raise StateFormatError(f"{where}: missing key '{key}'")
        return default
    value = doc[key]
    # bool is an int in Python; a boolean where a number belongs is still wrong
    if isinstance(value, bool) and bool not in types:
        raise StateFormatError(f"{where}.{key}: expected {_names(types)}, got a boolean")
    if not isinstance(value, types):
        raise StateFormatError(f"{where}.{key}: expected {_names(types)}, got {_json_type(value)}")
    return value


def _names(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", dict: "an object", list: "a list", type(None): "null", bool: "a boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _json_type(value: Any) -> str:
    return _names((type(value),))


def _str_list(values: list[Any], where: str) -> tuple[str, ...]:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise StateFormatError(f"{where}[{i}]: expected a string, got {_json_type(v)}")
    return tuple(values)


def _int_list(values: list[Any], where: str) -> tuple[int, ...]:
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise StateFormatError(f"{where}[{i}]: expected an integer, got {_json_type(v)}")
    return tuple(values)


def _last_run(doc: dict[str, Any]) -> LastRun:
    w = "last_run"
    result = _get(doc, w, "result", (str,))
    if result not in RUN_RESULTS:
        raise StateFormatError(f"{w}.result: '{result}' is not one of {', '.join(RUN_RESULTS)}")
    gpus = _get(doc, w, "gpus", (dict,), {})
    for k, v in gpus.items():
        if not isinstance(v, dict):
            raise StateFormatError(f"{w}.gpus.{k}: expected an object, got {_json_type(v)}")
    return LastRun(
        config=_get(doc, w, "config", (str,)),
        started_at=_get(doc, w, "started_at", (str,)),
        finished_at=_get(doc, w, "finished_at", (str, type(None)), None),
        result=result,
        exit_code=_get(doc, w, "exit_code", (int,)),
        gpus=gpus,
        message=_get(doc, w, "message", (str,), ""),
    )


def _journal(doc: dict[str, Any]) -> Journal:
    w = "journal"
    return Journal(
        config=_get(doc, w, "config", (str,)),
        phase=_get(doc, w, "phase", (str,)),
        started_at=_get(doc, w, "started_at", (str,)),
        pid=_get(doc, w, "pid", (int,)),
        stopped_units=_str_list(_get(doc, w, "stopped_units", (list,), []), f"{w}.stopped_units"),
        boot_id=_get(doc, w, "boot_id", (str,), ""),
    )


def _marker(doc: dict[str, Any]) -> RebootMarker:
    w = "reboot_guard"
    return RebootMarker(
        config=_get(doc, w, "config", (str,)),
        armed_at=_get(doc, w, "armed_at", (str,)),
        boot_id=_get(doc, w, "boot_id", (str,)),
        gpus=_int_list(_get(doc, w, "gpus", (list,), []), f"{w}.gpus"),
    )


def state_from_json(text: str) -> State:
    """Parse state.json; raises StateFormatError (or json.JSONDecodeError)."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise StateFormatError(f"expected a JSON object, got {_json_type(doc)}")
    version = _get(doc, "state", "version", (int,))
    if version != STATE_VERSION:
        raise StateFormatError(f"unsupported version {version} (this migmanagerd reads version {STATE_VERSION})")
    last_run = _get(doc, "state", "last_run", (dict, type(None)), None)
    journal = _get(doc, "state", "journal", (dict, type(None)), None)
    marker = _get(doc, "state", "reboot_guard", (dict, type(None)), None)
    return State(
        version=version,
        selected_config=_get(doc, "state", "selected_config", (str, type(None)), None),
        last_run=None if last_run is None else _last_run(last_run),
        journal=None if journal is None else _journal(journal),
        reboot_guard=None if marker is None else _marker(marker),
        integrations=_get(doc, "state", "integrations", (dict,), {}),
    )


# --- the store (I/O) -----------------------------------------------------------


class StateDirError(MigManagerError):
    """The state directory is not one only root controls: refuse the run."""


def check_state_dir_ancestors(d: Path) -> None:
    """Every existing ancestor of the state directory must be root's (or
    ours) and not writable by others, except a root-owned sticky directory
    (``/tmp``), where only an entry's owner can rename it; then missing
    ancestors are created 0755."""
    euid = os.geteuid()
    absolute = Path(os.path.abspath(d))
    for parent in reversed(absolute.parents):
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            try:
                parent.mkdir(mode=0o755)
            except FileExistsError:
                pass
            except OSError as exc:
                raise StateDirError(f"cannot create {parent} for the state directory: {exc.strerror}") from None
            st = os.stat(parent)
        sticky_root = st.st_uid == 0 and bool(st.st_mode & stat.S_ISVTX)
        if sticky_root:
            continue
        if st.st_uid not in (0, euid) or stat.S_IMODE(st.st_mode) & 0o022:
            raise StateDirError(
                f"state directory {d}: its ancestor {parent} is owned by uid {st.st_uid} with mode "
                f"{stat.S_IMODE(st.st_mode):04o}; another user could replace the state directory; refusing it"
            )


def read_own_file(path: Path) -> str:
    """Read a file in the state directory without following a symlink, and
    only if root (or we) own it and nobody else may write it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateFormatError("not a regular file")
        if st.st_uid not in (0, os.geteuid()) or stat.S_IMODE(st.st_mode) & 0o022:
            raise StateFormatError(
                f"owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: not written by migmanagerd"
            )
        with os.fdopen(os.dup(fd), "rb") as stream:
            data = stream.read()
    finally:
        os.close(fd)
    return data.decode("utf-8")


class _DirLock:
    """flock(2) on ``<state_dir>/.lock``: serialises the service and CLI
    writers. The kernel drops it when its holder dies, so a kill -9 can never
    leave the node locked; a holder stuck past LOCK_TIMEOUT_S is ignored with
    a warning rather than blocking the boot."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / LOCK_FILE_NAME
        self._fd: int | None = None

    def __enter__(self) -> _DirLock:
        try:
            self._fd = acquire(self._path, LOCK_TIMEOUT_S, mode=STATE_FILE_MODE)
        except LockTimeout:
            log.warning("%s: still locked after %.0fs; writing anyway", self._path, LOCK_TIMEOUT_S)
        except OSError as exc:
            log.warning("%s: cannot lock (%s); going on without it", self._path, exc.strerror)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only fd releases the flock
            self._fd = None


class StateStore:
    def __init__(self, paths: NodePaths) -> None:
        self.paths = paths

    @property
    def path(self) -> Path:
        return self.paths.state_file

    # reading

    def load(self) -> LoadResult:
        """The state on disk; never raises. Missing file: empty state, no problem."""
        path = self.path
        try:
            text = read_own_file(path)
        except FileNotFoundError:
            return LoadResult(State())
        except PermissionError as exc:
            # not corrupt, just not ours to read (e.g. `status` as a user):
            # leave it where it is
            return LoadResult(State(), f"{path}: cannot read it: {exc.strerror} (run as root)")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
                reason = "it is a symlink, which is never followed here"
            return LoadResult(State(), self._set_aside(f"cannot read it: {reason}"))
        except StateFormatError as exc:  # a directory, or planted by another user
            return LoadResult(State(), self._set_aside(f"cannot read it: {exc}"))
        try:
            return LoadResult(state_from_json(text))
        except json.JSONDecodeError as exc:
            return LoadResult(State(), self._set_aside(f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"))
        except RecursionError:
            # json's decoder recurses per nesting level; no real state file
            # comes near the limit
            return LoadResult(State(), self._set_aside("nested too deeply to be a state file"))
        except StateFormatError as exc:
            return LoadResult(State(), self._set_aside(str(exc)))

    def _set_aside(self, reason: str) -> str:
        path = self.path
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        try:
            os.replace(path, aside)
            problem = f"{path}: {reason}; moved aside to {aside.name}, starting from an empty state"
        except OSError as exc:
            problem = f"{path}: {reason}; could not move it aside ({exc.strerror}), starting from an empty state"
        log.warning("%s", problem)
        return problem

    # writing

    def ensure_dir(self) -> None:
        """Create the state directory 0700, or tighten it to 0700 if looser:
        it decides which units get restarted and whether the node reboots.
        A directory (or an ancestor) that another user owns or may write is
        refused (``StateDirError``): whatever is in it may have been planted."""
        d = self.paths.state_dir
        check_state_dir_ancestors(d)
        try:
            d.mkdir(mode=STATE_DIR_MODE)
            os.chmod(d, STATE_DIR_MODE)  # mkdir's mode is filtered by the umask
            return
        except FileExistsError:
            pass
        st = os.lstat(d)
        euid = os.geteuid()
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise StateDirError(f"state directory {d} is {what}; refusing to use it (remove it, the next run creates it)")
        if st.st_uid not in (0, euid):
            raise StateDirError(
                f"state directory {d} is owned by uid {st.st_uid}, not root: its journal could name any unit to "
                f"start; refusing it (check its content, then: chown -R root: {d}; chmod 0700 {d})"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            # ours: repair the mode; an entry another user planted while it
            # was open is refused by its owner check when it is read
            log.warning("%s: mode %04o is too open; tightening it to %04o", d, mode, STATE_DIR_MODE)
            os.chmod(d, STATE_DIR_MODE)

    def save(self, state: State) -> None:
        """Write ``state`` atomically. Raises OSError if the disk refuses."""
        self.ensure_dir()
        with _DirLock(self.paths.state_dir):
            self._write(state)

    def _write(self, state: State) -> None:
        write_atomic(self.path, state_to_json(state).encode("utf-8"), STATE_FILE_MODE)
        # a writer killed between creating and renaming its temp file leaves
        # it behind; we hold the lock, so none of them is live
        cleanup_temp_files(self.path)

    def update(self, change: Callable[[State], State]) -> State:
        """Read, change and write the state as one step under the writers' lock."""
        self.ensure_dir()
        with _DirLock(self.paths.state_dir):
            new = change(self.load().state)
            self._write(new)
            return new

    # the journal

    def begin_journal(self, config: str, phase: str) -> Journal:
        """Open the journal for a run, before any client is stopped.

        Units a previous, crashed run stopped and nobody has restarted yet are
        carried over, so they cannot be forgotten if this run crashes too."""
        boot_id = self.paths.read_boot_id()

        def change(s: State) -> State:
            carried = s.journal.stopped_units if s.journal is not None else ()
            journal = Journal(config, phase, utc_now(), os.getpid(), carried, boot_id)
            return replace(s, journal=journal)

        journal = self.update(change).journal
        assert journal is not None
        return journal

    def set_phase(self, phase: str) -> Journal:
        def change(s: State) -> State:
            return replace(s, journal=replace(self._open_journal(s), phase=phase))

        journal = self.update(change).journal
        assert journal is not None
        return journal

    def record_stopped(self, units: Sequence[str]) -> Journal:
        """Record units just stopped, given in the order they were stopped.
        They go to the front of ``stopped_units`` (restart order)."""

        def change(s: State) -> State:
            j = self._open_journal(s)
            new = [u for u in dict.fromkeys(reversed(list(units))) if u not in j.stopped_units]
            return replace(s, journal=replace(j, stopped_units=tuple(new) + j.stopped_units))

        journal = self.update(change).journal
        assert journal is not None
        return journal

    def record_started(self, units: Sequence[str]) -> Journal | None:
        """Drop units from the journal once they run again."""
        done = set(units)

        def change(s: State) -> State:
            if s.journal is None:
                return s
            left = tuple(u for u in s.journal.stopped_units if u not in done)
            return replace(s, journal=replace(s.journal, stopped_units=left))

        return self.update(change).journal

    def end_journal(self) -> None:
        self.update(lambda s: replace(s, journal=None))

    @staticmethod
    def _open_journal(s: State) -> Journal:
        if s.journal is None:
            # the caller's bug, not the operator's: begin_journal() comes first
            raise RuntimeError("no journal open: call begin_journal() first")
        return s.journal

    # runs

    def record_run(self, last_run: LastRun) -> State:
        """Store the result of a run; a successful run also becomes
        ``selected_config`` (the fallback when neither -c nor the drop-in names one)."""

        def change(s: State) -> State:
            selected = last_run.config if last_run.result == "ok" else s.selected_config
            return replace(s, last_run=last_run, selected_config=selected)

        return self.update(change)

    def set_integration(self, name: str, value: Any) -> State:
        """Per-integration state (JSON-serialisable), kept under ``integrations.<name>``."""
        json.dumps(value)  # fail here, not half-way through a write

        def change(s: State) -> State:
            return replace(s, integrations={**s.integrations, name: value})

        return self.update(change)
