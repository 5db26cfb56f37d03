"""Runs hooks.yaml hooks the way nvidia-mig-parted does, with a time bound.

Each hook is ``[command, *args]`` executed directly (no shell: shipped hooks
call ``/bin/bash -c`` themselves), in ``workdir``, with the daemon's
environment plus the apply's variables plus the hook's own ``envs``. Output is
logged line by line as it arrives so a stuck hook is visible in the journal.
A hook that outlives ``timeout_s`` is killed with everything it started, its
``setsid`` daemons included (proctree.py), and the log names any PID that
survived: hooks run before GPU clients are restarted, so a hang must not hold
the node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from typing import IO

from migmanagerd.errors import MigManagerError
from migmanagerd.log import get_logger
from migmanagerd.proctree import TreeKill, become_subreaper, kill_tree, new_tag, tagged_env
from migmanagerd.spec.limits import timeout_problem
from migmanagerd.spec.types import HOOK_NAMES, HooksFile, HookSpec

log = get_logger("hooks")

# After SIGTERM to a timed-out hook's processes, how long they may take to
# exit before they get SIGKILL.
TERM_GRACE_S = 5.0
_MAX_LINE = 16384


def hook_env(
    *,
    selected_config: str,
    config_file: str,
    hooks_file: str,
    gpus: Iterable[int],
    skip_reset: bool = False,
    mode_only: bool = False,
) -> dict[str, str]:
    """The variables every hook of one apply receives.

    nvidia-mig-parted hands its hooks one variable per ``apply`` flag
    (``cmd/nvidia-mig-parted/apply/apply.go``, GetHooksEnvsMap), booleans
    printed as ``true``/``false``; shipped hooks.sh scripts read them, so the
    same names are set here, plus migmanagerd's own.
    """
    return {
        "MIG_PARTED_SELECTED_CONFIG": selected_config,
        "MIG_PARTED_CONFIG_FILE": config_file,
        "MIG_PARTED_HOOKS_FILE": hooks_file,
        "MIG_PARTED_SKIP_RESET": "true" if skip_reset else "false",
        "MIG_PARTED_MODE_CHANGE_ONLY": "true" if mode_only else "false",
        "MIGMANAGERD_SELECTED_CONFIG": selected_config,
        "MIGMANAGERD_GPUS": ",".join(str(i) for i in sorted(set(gpus))),
    }


class HookFailed(MigManagerError):
    """A hook exited non-zero, timed out or could not be started.

    ``exit_status`` is the exit status, the negative signal number when it was
    killed by a signal, or None when it timed out or never started.
    """

    def __init__(self, hook: str, index: int, command: str, exit_status: int | None, reason: str) -> None:
        self.hook = hook
        self.index = index
        self.command = command
        self.exit_status = exit_status
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"hook {self.hook}[{self.index}] ({self.command}) {self.reason}"


class HookRunner:
    def __init__(self, hooks: HooksFile, env: Mapping[str, str], timeout_s: float = 120.0) -> None:
        problem = timeout_problem(timeout_s)
        if problem is not None:
            # the CLI checks --hook-timeout first; this guards other callers
            raise ValueError(f"timeout_s {problem}")
        self._hooks = hooks
        self._env = dict(env)
        self._timeout_s = timeout_s

    def run(self, name: str) -> None:
        """Run every hook registered under ``name`` in file order; the first
        failure raises ``HookFailed`` and the rest are not run."""
        if name not in HOOK_NAMES:
            raise ValueError(f"unknown hook name {name!r}")
        for index, spec in enumerate(self._hooks.get(name)):
            self._run_one(name, index, spec)

    def _run_one(self, name: str, index: int, spec: HookSpec) -> None:
        tag = f"{name}[{index}]"
        argv = [spec.command, *spec.args]
        if spec.workdir is not None and not os.path.isdir(spec.workdir):
            raise HookFailed(name, index, spec.command, None, f"cannot run: workdir {spec.workdir} does not exist")
        child_tag = new_tag()
        env = tagged_env({**os.environ, **self._env, **spec.envs}, child_tag)
        become_subreaper()
        log.info("running hook %s (%s): %s", tag, spec.loc, " ".join(argv))
        try:
            proc = subprocess.Popen(
                argv,
                cwd=spec.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a timeout can kill all of it
                close_fds=True,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise HookFailed(name, index, spec.command, None, f"could not be started: {reason}") from None

        assert proc.stdout is not None
        reader = threading.Thread(target=_log_lines, args=(proc.stdout, tag), name=f"hook-{tag}", daemon=True)
        reader.start()
        deadline = time.monotonic() + self._timeout_s
        try:
            status = proc.wait(timeout=self._timeout_s)
            # The hook is finished only when its output is closed too: a child it
            # left behind holding stdout is still part of the hook.
            reader.join(max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(argv, self._timeout_s)
        except subprocess.TimeoutExpired:
            result = _kill_all(proc, child_tag)
            reader.join(TERM_GRACE_S)
            raise HookFailed(
                name, index, spec.command, None,
                f"timed out after {self._timeout_s:g}s; {result.describe()}",
            ) from None
        except BaseException:
            # Interrupted while waiting (e.g. Ctrl-C on `migmanagerd apply`):
            # leave no hook processes behind.
            _kill_all(proc, child_tag)
            raise
        finally:
            if not reader.is_alive():
                proc.stdout.close()
        if status != 0:
            raise HookFailed(name, index, spec.command, status, _describe_status(status))
        log.debug("hook %s finished", tag)


def _log_lines(stream: IO[bytes], tag: str) -> None:
    # Bounded reads: a hook printing megabytes without a newline is logged in
    # pieces instead of being held in memory.
    for raw in iter(lambda: stream.readline(_MAX_LINE), b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        log.info("hook %s: %s", tag, line)


def _kill_all(proc: subprocess.Popen[bytes], tag: str) -> TreeKill:
    result = kill_tree(tag, proc.pid, grace_s=TERM_GRACE_S)
    try:
        proc.wait(timeout=TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        pass  # named in result.left: the message says it may still run
    return result


def _describe_status(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"failed with exit status {status}"
