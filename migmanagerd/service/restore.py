"""``restore``: the boot-time run with a checkpoint's layout as its target.

Everything but the target is the service run's (hooks, GPU clients, journal,
run lock, rollback, state.json), so a restore is as safe as an ``apply``. The
target is a config made from the checkpoint file whose entries pin each GPU
instance to the checkpoint's placement (apply.checkpoint, planner.exact).
A restore does not change the boot-time selection: the next boot applies the
selected config as before.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from migmanagerd.apply.checkpoint import checkpoint_config, read_checkpoint
from migmanagerd.apply.engine import ApplyEngine
from migmanagerd.catalog.model import GpuModel
from migmanagerd.gpu.factory import open_backend
from migmanagerd.log import get_logger
from migmanagerd.service.inputs import RunInputs, inputs_for
from migmanagerd.service.options import RunOutcome
from migmanagerd.service.run import ServiceRun

log = get_logger("service")


class RestoreRun(ServiceRun):
    """A service run whose config comes from ``checkpoint_file``."""

    def __init__(self, checkpoint_file: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_file = checkpoint_file

    def _load_inputs(self, state_selection: str | None) -> RunInputs:
        devices = read_checkpoint(self.checkpoint_file)
        config = checkpoint_config(self.checkpoint_file, devices, self._node_gpus())
        return inputs_for(config.name, config, self.checkpoint_file, self.opts, self.paths)

    def _node_gpus(self) -> list[tuple[int, str, GpuModel | None]]:
        """(index, UUID, model) of this node's GPUs: a checkpoint names GPUs by UUID."""
        backend = self._backend if self._backend is not None else open_backend(self.opts.backend)
        try:
            engine = ApplyEngine(backend)
            return [(info.index, info.uuid, engine.model_for(info)) for info in backend.gpus()]
        finally:
            if self._backend is None:
                backend.close()

    def _record(self, name: str, started: str, outcome: RunOutcome) -> None:
        # the run is recorded, but a checkpoint is no config a later run can fall back to
        before = self.store.load().state.selected_config
        super()._record(name, started, outcome)
        try:
            self.store.update(lambda s: replace(s, selected_config=before))
        except OSError as exc:
            log.error("%s: cannot keep the selected config: %s", self.store.path, exc.strerror)
