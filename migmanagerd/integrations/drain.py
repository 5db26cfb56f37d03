"""Drain the Slurm node around a MIG change, and resume it when the change worked.

The service asks ``before_change()`` before it stops clients or touches a GPU:
True means go ahead (no job can be using a GPU any more), False means leave the
GPUs alone this time — the node is then left drained with a reason saying why.
After the run, ``after_change(summary)`` resumes the node if the run succeeded
and leaves it drained, with a reason naming the result, if not.

A drain is migmanagerd's only when this service set it: recorded in the state
directory (drain_record.py, so it survives the reboot a mode change may need)
and still carrying our reason on slurmctld. A node an operator drained, even
with a reason that starts like ours, is never re-drained or resumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from migmanagerd.integrations.drain_record import DrainRecord
from migmanagerd.integrations.layout import RunSummary
from migmanagerd.integrations.scontrol import NodeStatus, Scontrol, ScontrolError
from migmanagerd.integrations.settings import SlurmSettings
from migmanagerd.log import get_logger

log = get_logger("integrations.slurm")


class SlurmDrain:
    def __init__(
        self,
        settings: SlurmSettings,
        scontrol: Scontrol,
        *,
        slurmd_active: Callable[[], bool] | None = None,
        progress: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        record: DrainRecord | None = None,
    ) -> None:
        self.settings = settings
        self.node = settings.node_name
        self.reason = settings.drain.reason
        self._scontrol = scontrol
        self._slurmd_active = slurmd_active
        self._progress = progress or (lambda _msg: None)
        self._sleep = sleep
        self._monotonic = monotonic
        self._record = record if record is not None else DrainRecord()
        self.report: dict[str, Any] = {}
        self._by_other = False

    @property
    def enabled(self) -> bool:
        return self.settings.enabled and self.settings.drain.enabled

    def ours(self, status: NodeStatus) -> bool:
        return status.drained and (status.reason or "").startswith(self.reason) and self._record.is_ours(self.node)

    # --- before ---------------------------------------------------------------

    def before_change(self, config: str | None = None) -> bool:
        """Drain and wait until no job runs on the node; False: do not reconfigure."""
        if not self.enabled:
            self.report = {"drain": "disabled"}
            return True
        slurmd_running = self._slurmd_active() if self._slurmd_active else True
        try:
            before = self._scontrol.show_node(self.node)
            by_other = self._by_other = before.drained and not self.ours(before)
            if not by_other:
                # An operator's drain (and reason) is left alone: re-draining would
                # overwrite the reason and make migmanagerd resume the node later.
                self._scontrol.drain(self.node, self._reason(config))
                self._record.remember(self.node, self._reason(config))
        except ScontrolError as exc:
            if not slurmd_running:
                # slurmd is ordered after nvidia-gpu-reset.target: at boot it is not
                # running yet, so no job can hold a GPU here whatever slurmctld says.
                log.warning("cannot drain node %s (%s); slurmd is not running, so no job can be: proceeding",
                            self.node, exc)
                self.report = {"drain": "skipped", "error": str(exc)}
                return True
            log.warning("cannot drain node %s: %s; not changing MIG layout", self.node, exc)
            self.report = {"drain": "failed", "proceed": False, "error": str(exc)}
            return False
        self.report = {"drain": "already drained by someone else" if by_other else "drained",
                       "node": self.node, "state_before": before.state}
        if not slurmd_running:
            self.report["wait"] = "skipped: slurmd not running"
            return True
        return self._wait_idle(config)

    def _reason(self, config: str | None, detail: str | None = None) -> str:
        text = self.reason if config is None else f"{self.reason} (config {config})"
        return f"{text}: {detail}" if detail else text

    def _wait_idle(self, config: str | None) -> bool:
        timeout = self.settings.drain.timeout_s
        start = self._monotonic()
        deadline = start + timeout
        while True:
            try:
                status = self._scontrol.show_node(self.node)
            except ScontrolError as exc:
                return self._give_up(config, f"lost slurmctld while waiting for jobs: {exc}")
            if not status.busy:
                waited = self._monotonic() - start
                self.report.update(wait="idle", waited_s=round(waited, 3))
                log.info("node %s drained and idle after %.0fs", self.node, waited)
                return True
            now = self._monotonic()
            if now >= deadline:
                return self._give_up(
                    config, f"timed out after {timeout}s waiting for running jobs; MIG layout not changed"
                )
            msg = f"waiting for jobs on Slurm node {self.node} to finish ({status.state}, {status.cpu_alloc} CPUs allocated)"
            self._progress(msg)
            log.info("%s", msg)
            self._sleep(min(self.settings.drain.poll_s, deadline - now))

    def _give_up(self, config: str | None, detail: str) -> bool:
        log.warning("node %s left drained: %s", self.node, detail)
        self.report.update(wait="gave-up", proceed=False, error=detail)
        if self._by_other:
            return False
        try:
            self._scontrol.drain(self.node, self._reason(config, detail))
        except ScontrolError as exc:
            self.report["reason_error"] = str(exc)
        return False

    # --- after ----------------------------------------------------------------

    def after_change(self, summary: RunSummary, failure: str | None = None) -> dict[str, Any]:
        """Resume the node after a good run; otherwise keep it drained, saying why.

        ``failure`` names a problem found after the apply (gres file not
        written, slurmd restart failed) that must keep the node out of service.
        """
        if not self.enabled:
            return {"node": "drain disabled"}
        status = self._scontrol.show_node(self.node)
        if not self.ours(status):
            if not status.drained:
                self._record.forget()  # resumed by someone: our drain is over
            what = "drained by someone else" if status.drained else "not drained"
            return {"node": f"{what}; left as is", "state": status.state}
        good = summary.ok and summary.matched and failure is None
        if good:
            self._scontrol.resume(self.node)
            self._record.forget()
            log.info("node %s resumed", self.node)
            return {"node": "resumed"}
        if failure is None and status.reason not in (self.reason, self._reason(summary.config)):
            # already annotated (e.g. by a drain wait that timed out): keep the first cause
            return {"node": "left-drained", "reason": status.reason}
        detail = failure or f"MIG apply {summary.result}; see journalctl -u nvidia-mig-manager"
        reason = self._reason(summary.config, detail)
        self._scontrol.drain(self.node, reason)
        log.warning("node %s left drained: %s", self.node, detail)
        return {"node": "left-drained", "reason": reason}
