"""Error types shared by every layer.

Each error carries the exit code the CLI turns it into, so no layer has to know
about the CLI: 2 for bad input (nothing on the node was touched), 1 for an
operation that failed.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class MigManagerError(Exception):
    """An expected failure: reported as one line, never as a traceback."""

    exit_code = EXIT_FAILED


class UsageError(MigManagerError):
    """Bad arguments or input; nothing on the node was changed."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class SourceLocation:
    """Where in an input file a value came from (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class SpecError(UsageError):
    """An error in an operator's file, pinned to file:line:column.

    ``context`` names what the value belongs to (e.g. ``config 'all-balanced'``)
    and ``field`` the key path, so the one-line message says where and what.
    """

    def __init__(
        self,
        message: str,
        location: SourceLocation | None = None,
        *,
        context: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.location = location
        self.context = context
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.location is not None:
            parts.append(str(self.location))
        if self.context:
            parts.append(self.context)
        if self.field:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)
