"""``restore``: the boot-time run with a checkpoint's layout as its target.

Everything but the target is the service run's (hooks, GPU clients, journal,
run lock, rollback, state.json), so a restore is as safe as an ``apply``. The
target is a config made from the checkpoint file whose entries pin each GPU
instance to the checkpoint's placement (apply.checkpoint, planner.exact).
A restore does not change the boot-time selection: the next boot applies the
selected config as before.
"""

from __future__ import annotations

from migmanagerd.apply.checkpoint import checkpoint_config, read_checkpoint
from migmanagerd.catalog.model import GpuModel
from migmanagerd.service.run import RunOutcome, ServiceRun


class RestoreRun(ServiceRun):
    """A service run whose config comes from ``checkpoint_file``."""

    def __init__(self, checkpoint_file: str, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.checkpoint_file = checkpoint_file

    def _load_inputs(self, state_selection: str | None):  # type: ignore[no-untyped-def]
        devices = read_checkpoint(self.checkpoint_file)
        config = checkpoint_config(self.checkpoint_file, devices, self._node_gpus())
        # hooks, clients and integrations exactly as an apply loads them
        hooks = self._load_hooks()  # type: ignore[no-untyped-call]
        clients = self._load_clients()  # type: ignore[no-untyped-call]
        integrations = self._load_integrations()  # type: ignore[no-untyped-call]
        return config.name, config, hooks, clients, integrations

    def _node_gpus(self) -> list[tuple[int, str, GpuModel | None]]:
        from migmanagerd.apply.engine import ApplyEngine
        from migmanagerd.gpu.factory import open_backend

        backend = self._backend if self._backend is not None else open_backend(self.opts.backend)
        try:
            engine = ApplyEngine(backend)
            return [(info.index, info.uuid, engine.model_for(info)) for info in backend.gpus()]
        finally:
            if self._backend is None:
                backend.close()

    def _record(self, name: str, started: str, outcome: RunOutcome, report_json: dict) -> None:  # type: ignore[type-arg]
        # the run is recorded, but a checkpoint is not a config the next run can select
        before = self.store.load().state.selected_config
        super()._record(name, started, outcome, report_json)
        try:
            self.store.set_selected(before)
        except OSError as exc:
            from migmanagerd.service.run import log

            log.error("%s: cannot keep the selected config: %s", self.store.path, exc.strerror)
