"""Is the run a journal names still running?

state.json's journal records the PID of the run that opened it, the time it
did and the boot it ran in. A journal outlives its run when the run was
killed (or the node lost power), and a PID is reused, so "a process with
that PID exists" proves nothing. The run is live only if, in this boot, the
PID belongs to a migmanagerd process that was already running when the
journal was opened.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from migmanagerd.service.state import Journal

# state.json's times have whole seconds; a process started within the same
# second as its journal is the journal's.
START_SLACK_S = 1.0


def process_start_epoch(pid: int, proc: Path = Path("/proc")) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when
    there is no such process (or /proc cannot say)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        boot_time = next(
            int(line.split()[1]) for line in (proc / "stat").read_text().splitlines() if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        # field 22 of stat(5), the 20th after "pid (comm)": start time in clock ticks since boot
        ticks = int(fields[19])
    except (IndexError, ValueError):
        return None
    return boot_time + ticks / os.sysconf("SC_CLK_TCK")


def _is_migmanagerd(pid: int, proc: Path) -> bool:
    try:
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    return b"migmanagerd" in cmdline


def journal_is_live(journal: Journal, current_boot_id: str, proc: Path = Path("/proc")) -> bool:
    if journal.boot_id and current_boot_id and journal.boot_id != current_boot_id:
        return False  # opened in an earlier boot
    started = process_start_epoch(journal.pid, proc)
    if started is None or not _is_migmanagerd(journal.pid, proc):
        return False
    try:
        opened = datetime.strptime(journal.started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return False
    return started <= opened + START_SLACK_S
