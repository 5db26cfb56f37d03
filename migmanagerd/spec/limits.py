"""Upper bounds on operator-given durations.

A timeout ends up in a poll(2) in milliseconds, a D-Bus uint32 or a
``threading`` wait, each of which overflows somewhere above 2**31 ms
(``stop-timeout: 4294967`` or ``--hook-timeout 1e12`` crashed a run with
OverflowError). No hook, client stop or start and no command we run has a
reason to take longer than a day, so that is the ceiling everywhere, checked
where the value is read, with the name of the setting in the message.
"""

from __future__ import annotations

import math

from migmanagerd.errors import SpecError
from migmanagerd.spec.source import YNode, require_int

MAX_TIMEOUT_S = 86_400


def timeout_problem(value: float) -> str | None:
    """Why ``value`` (seconds) is not a usable timeout, or None."""
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        return f"must be a positive number of seconds, got {value!r}"
    if value > MAX_TIMEOUT_S:
        return f"must be at most {MAX_TIMEOUT_S} seconds (one day), got {value:g}"
    return None


def require_timeout(node: YNode, *, context: str | None = None, field: str | None = None, minimum: int = 1) -> int:
    """An integer number of seconds from an operator's file, ``minimum`` up to a day."""
    value = require_int(node, minimum=minimum, context=context, field=field)
    if value > MAX_TIMEOUT_S:
        raise SpecError(f"must be at most {MAX_TIMEOUT_S} seconds (one day), got {value}", node.loc,
                        context=context, field=field)
    return value
