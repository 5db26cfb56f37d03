"""The selector drop-in: which config the unit applies at boot.

``/etc/systemd/system/nvidia-mig-manager.service.d/override.conf``::

    [Service]
    Environment="MIG_PARTED_SELECTED_CONFIG=all-balanced"

is what nvidia-mig-parted's service reads, so an existing node keeps working.
``MIG_PARTED_CONFIG_FILE`` / ``MIG_PARTED_HOOKS_FILE`` lines appear only when
they differ from the defaults.

Operators edit this file by hand, so reading follows systemd's own rules
(systemd.syntax(7), systemd.exec(7) "Environment="): ``#``/``;`` comments,
backslash line continuation, several ``Environment=`` lines and several
assignments per line, double or single quotes around a whole assignment or
part of it, C escapes, ``%%`` for a literal ``%``, later assignments win, and
an empty ``Environment=`` resets the list. Rewriting keeps every line we do
not own byte for byte, and other variables on a line we do touch keep their
original spelling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from migmanagerd.atomic_file import write_atomic
from migmanagerd.default_paths import DEFAULT_CONFIG_FILE, DEFAULT_HOOKS_FILE
from migmanagerd.errors import MigManagerError, UsageError

VAR_SELECTED = "MIG_PARTED_SELECTED_CONFIG"
VAR_CONFIG_FILE = "MIG_PARTED_CONFIG_FILE"
VAR_HOOKS_FILE = "MIG_PARTED_HOOKS_FILE"
OWNED_VARS = (VAR_SELECTED, VAR_CONFIG_FILE, VAR_HOOKS_FILE)
DROPIN_MODE = 0o644  # systemd reads unit files as root, but `systemctl cat` users expect 0644

_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "s": " ", "\\": "\\", '"': '"', "'": "'"}
_WHITESPACE = " \t\n\r"


@dataclass(frozen=True)
class Selector:
    selected_config: str | None
    config_file: str | None  # None: the default path
    hooks_file: str | None  # None: the default path
    path: Path
    # every variable the drop-in sets, ours included (what `status` may show)
    environment: dict[str, str] = field(default_factory=dict)
    # what makes systemd read the file differently than its author meant
    problem: str | None = None


# --- tokenising (pure) --------------------------------------------------------


@dataclass(frozen=True)
class _Word:
    raw: str  # as written, for rewriting other variables untouched
    value: str  # unquoted, unescaped


def _unescape_specifiers(text: str) -> str:
    # Only "%%" has a meaning we can know here; other specifiers (%n, %i, ...)
    # depend on the unit and are kept as written.
    return text.replace("%%", "%")


def split_words(value: str) -> list[_Word]:
    """Split an ``Environment=`` value into assignments the way systemd does
    (extract_first_word with unquoting, C unescaping and relaxed rules)."""
    words: list[_Word] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in _WHITESPACE:
            i += 1
        if i >= n:
            return words
        start = i
        out: list[str] = []
        quote: str | None = None
        while i < n:
            ch = value[i]
            if ch == "\\" and i + 1 < n:
                nxt = value[i + 1]
                if nxt == "x" and _is_hex(value[i + 2 : i + 4]):
                    out.append(chr(int(value[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                out.append(_C_ESCAPES.get(nxt, nxt))
                i += 2
                continue
            if quote is not None:
                if ch == quote:
                    quote = None
                else:
                    out.append(ch)
                i += 1
                continue
            if ch in "\"'":
                quote = ch
                i += 1
                continue
            if ch in _WHITESPACE:
                break
            out.append(ch)
            i += 1
        # an unclosed quote runs to the end of the line (systemd's relaxed mode)
        words.append(_Word(value[start:i], _unescape_specifiers("".join(out))))


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def quote_assignment(name: str, value: str) -> str:
    """``"NAME=value"`` with what systemd would unescape escaped again."""
    body = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{body}"'


# --- the file as logical lines ------------------------------------------------


@dataclass
class _Line:
    raw: str  # physical line(s), with their newlines
    section: str | None  # the section this line belongs to ([Service] -> "Service")
    key: str | None = None
    value: str = ""
    header: bool = False
    lineno: int = 0  # 1-based number of its first physical line
    # systemd stops reading the file at an invalid section header ("[Service] # c"):
    # this line and every line after it mean nothing to the unit
    invalid_header: bool = False
    # the file ended inside a backslash continuation: text appended right
    # after this line would be joined to it
    open_continuation: bool = False


def _is_comment(physical: str) -> bool:
    stripped = physical.lstrip(_WHITESPACE)
    return bool(stripped) and stripped[0] in "#;"


def _ends_escaped(text: str) -> bool:
    """Whether ``text`` ends in a backslash that is not itself escaped (a
    line continuation), counted from the start as systemd does."""
    escaped = False
    for ch in text:
        escaped = not escaped if ch == "\\" else False
    return escaped


def _logical_lines(text: str) -> list[_Line]:
    """The file as systemd's config parser reads it (systemd.syntax(7), and
    tried against systemd 252): a physical line whose first non-blank
    character is ``#`` or ``;`` is a comment, even inside a continuation; a
    trailing unescaped backslash joins the next line, replaced by a space; an
    empty line ends a continuation; section headers are recognised after
    joining; a header not ending in ``]`` makes systemd ignore the rest of the
    file."""
    physical = text.splitlines(keepends=True)
    lines: list[_Line] = []
    section: str | None = None
    dead = False
    i = 0
    while i < len(physical):
        raw = physical[i]
        lineno = i + 1
        if _is_comment(raw):
            lines.append(_Line(raw, section, lineno=lineno, invalid_header=dead))
            i += 1
            continue
        parts = [raw]
        joined = raw.rstrip("\r\n")
        open_continuation = False
        while _ends_escaped(joined):
            joined = joined[:-1] + " "
            i += 1
            while i < len(physical) and _is_comment(physical[i]):
                parts.append(physical[i])
                i += 1
            if i >= len(physical):
                open_continuation = True
                break
            parts.append(physical[i])
            joined += physical[i].rstrip("\r\n")
        i += 1
        line = _Line("".join(parts), section, lineno=lineno, open_continuation=open_continuation)
        stripped = joined.strip(_WHITESPACE)
        if dead or not stripped:
            line.invalid_header = dead
        elif stripped.startswith("["):
            if stripped.endswith("]"):
                section = stripped[1:-1]
                line.section, line.header = section, True
            else:
                dead = True
                line.invalid_header = True
        else:
            key, sep, value = joined.partition("=")
            if sep:
                line.key, line.value = key.strip(_WHITESPACE), value.strip(_WHITESPACE)
        lines.append(line)
    return lines


def _environment(lines: list[_Line]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in lines:
        if line.invalid_header:
            break  # systemd read no further
        if line.section != "Service" or line.key != "Environment":
            continue
        words = split_words(line.value)
        if not words:
            env.clear()  # "Environment=" resets the list
            continue
        for w in words:
            name, sep, val = w.value.partition("=")
            if sep and name:
                env[name] = val
    return env


def invalid_header_line(text: str) -> int | None:
    """The line number of a section header systemd rejects, or None."""
    for line in _logical_lines(text):
        if line.invalid_header:
            return line.lineno
    return None


def parse_selector(text: str, path: Path) -> Selector:
    lines = _logical_lines(text)
    env = _environment(lines)
    bad = next((line for line in lines if line.invalid_header), None)
    problem = None
    if bad is not None:
        problem = (
            f"{path}:{bad.lineno}: invalid section header {bad.raw.strip()!r}: "
            "systemd ignores this line and every line after it"
        )
    return Selector(
        selected_config=env.get(VAR_SELECTED) or None,
        config_file=env.get(VAR_CONFIG_FILE) or None,
        hooks_file=env.get(VAR_HOOKS_FILE) or None,
        path=path,
        environment=env,
        problem=problem,
    )


# --- reading and writing (I/O at the edge) ------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise MigManagerError(f"{path}: cannot read the selector drop-in: {exc.strerror}") from None


def read_selector(path: Path | str) -> Selector:
    """The selection in the drop-in; a missing file selects nothing."""
    path = Path(path)
    text = _read_text(path)
    if text is None:
        return Selector(None, None, None, path)
    return parse_selector(text, path)


def validate_config_name(name: str) -> str:
    """A config name must survive a round trip through the drop-in and the
    shell hooks it is passed to: no quotes, backslashes, whitespace or control
    characters."""
    if not isinstance(name, str) or not name:
        raise UsageError("config name must not be empty")
    bad = [c for c in name if c in "\"'\\`$" or c.isspace() or not c.isprintable()]
    if bad:
        raise UsageError(
            f"config name {name!r} is not a plain name: {bad[0]!r} is not allowed "
            "(no quotes, backslashes, '$', '`', whitespace or control characters)"
        )
    return name


def _validate_path(what: str, value: str) -> str:
    if not value or any(not c.isprintable() for c in value):
        raise UsageError(f"{what} {value!r} must be a non-empty path without control characters")
    if not value.startswith("/"):
        # the unit runs with / as its working directory; a relative path there
        # would name a different file than the one the operator meant
        raise UsageError(f"{what} {value!r} must be an absolute path")
    return value


def render_selector(
    old_text: str | None,
    selected_config: str,
    config_file: str | None = None,
    hooks_file: str | None = None,
    *,
    path_hint: str = "drop-in",
) -> str:
    """The new drop-in text (pure): our variables replaced, the rest kept.
    ``path_hint`` names the file in errors."""
    validate_config_name(selected_config)
    ours = [(VAR_SELECTED, selected_config)]
    if config_file is not None and config_file != DEFAULT_CONFIG_FILE:
        ours.append((VAR_CONFIG_FILE, _validate_path("config file", config_file)))
    if hooks_file is not None and hooks_file != DEFAULT_HOOKS_FILE:
        ours.append((VAR_HOOKS_FILE, _validate_path("hooks file", hooks_file)))
    new_lines = [f"Environment={quote_assignment(k, v)}\n" for k, v in ours]

    if not old_text:
        return "[Service]\n" + "".join(new_lines)

    lines = _logical_lines(old_text)
    _refuse_invalid_header(lines, path_hint)
    out, last_service_end = _kept_lines(lines)
    if out and not out[-1].endswith(("\n", "\r")):
        out[-1] += "\n"
    if last_service_end is None:
        if out and out[-1].strip():
            out.append("\n")
        out.append("[Service]\n")
        out.extend(new_lines)
    else:
        # last in the last [Service] section, so no later assignment or
        # "Environment=" reset in the file can override them
        out[last_service_end:last_service_end] = new_lines
    return "".join(out)


def _refuse_invalid_header(lines: list[_Line], path_hint: str) -> None:
    bad = next((line for line in lines if line.invalid_header), None)
    if bad is not None:
        # systemd ignores everything from this line on, so a selection written
        # there would never reach the unit: refuse rather than report success
        raise UsageError(
            f"{path_hint}:{bad.lineno}: invalid section header {bad.raw.strip()!r} "
            "(systemd ignores the rest of the file); fix or remove that line, then select again"
        )


def _kept_lines(lines: list[_Line]) -> tuple[list[str], int | None]:
    """The file's lines without our variables, and the index in them after
    the last setting (or header) of the last [Service] section, where ours
    go; comments and blank lines after it stay after our lines."""
    out: list[str] = []
    last_service_end: int | None = None
    for line in lines:
        if line.section == "Service" and line.key == "Environment":
            words = split_words(line.value)
            kept = [w for w in words if w.value.partition("=")[0] not in OWNED_VARS]
            if len(kept) == len(words):
                out.append(line.raw)
            elif kept:
                out.append("Environment=" + " ".join(w.raw for w in kept) + _newline(line.raw))
            # else: the line only set our variables; it is replaced below
        else:
            out.append(line.raw)
        if line.open_continuation:
            # an empty line ends the continuation, so nothing after it is joined to it
            out.append("\n")
        if line.section == "Service" and (line.header or line.key is not None):
            last_service_end = len(out)
    return out, last_service_end


def _newline(raw: str) -> str:
    return "\r\n" if raw.endswith("\r\n") else "\n"


def write_selector(
    path: Path | str,
    selected_config: str,
    config_file: str | None = None,
    hooks_file: str | None = None,
) -> bool:
    """Select ``selected_config`` in the drop-in, atomically; True if the file changed.

    ``config_file``/``hooks_file`` None (or the default path) means the
    default, and removes a line naming another one; to keep an operator's
    path, pass what ``read_selector`` returned. Reloading systemd so the unit
    sees the change is the caller's job.
    """
    path = Path(path)
    old = _read_text(path)
    new = render_selector(old, selected_config, config_file, hooks_file, path_hint=str(path))
    if new == old:
        return False
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(path, new.encode("utf-8"), DROPIN_MODE)
    except OSError as exc:
        raise MigManagerError(f"{path}: cannot write the selector drop-in: {exc.strerror}") from None
    return True
