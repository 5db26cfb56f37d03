"""HookRunner against real subprocesses (/bin/sh scripts in temporary dirs)."""

from __future__ import annotations

import logging
import os
import time

import pytest

from migmanagerd.errors import EXIT_FAILED, SourceLocation
from migmanagerd.hooks.runner import HookFailed, HookRunner
from migmanagerd.spec.hooks import parse_hooks
from migmanagerd.spec.types import HooksFile, HookSpec

LOC = SourceLocation("hooks.yaml", 1, 1)


def sh(script: str, *, workdir: str | None = None, envs: dict[str, str] | None = None) -> HookSpec:
    return HookSpec(command="/bin/sh", args=("-c", script), envs=envs or {}, workdir=workdir, loc=LOC)


def hooks(**by_name: list[HookSpec]) -> HooksFile:
    return HooksFile(path="hooks.yaml", hooks={k.replace("_", "-"): tuple(v) for k, v in by_name.items()})


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def hook_log():
    """Records of the hooks logger, caught on the logger itself: setup_logging()
    elsewhere turns off propagation from 'migmanagerd', which would hide them
    from a root-level capture."""
    logger = logging.getLogger("migmanagerd.hooks")
    handler = _Records()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def messages(log) -> list[str]:
    return [r.getMessage() for r in log.records]


def test_hooks_run_in_file_order(tmp_path):
    out = tmp_path / "order"
    hf = hooks(apply_start=[sh(f"echo one >> {out}"), sh(f"echo two >> {out}"), sh(f"echo three >> {out}")])
    HookRunner(hf, {}).run("apply-start")
    assert out.read_text().split() == ["one", "two", "three"]


def test_only_the_named_hook_runs(tmp_path):
    out = tmp_path / "which"
    hf = hooks(apply_start=[sh(f"echo start >> {out}")], apply_exit=[sh(f"echo exit >> {out}")])
    HookRunner(hf, {}).run("apply-exit")
    assert out.read_text().split() == ["exit"]


def test_name_without_hooks_is_a_no_op():
    HookRunner(hooks(), {}).run("pre-apply-mode")


def test_unknown_name_is_a_programming_error():
    with pytest.raises(ValueError):
        HookRunner(hooks(), {}).run("post-apply")


def test_environment_passing_and_hook_envs_win(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_DAEMON", "daemon")
    monkeypatch.setenv("OVERRIDDEN", "daemon")
    out = tmp_path / "env"
    script = f'printf "%s|%s|%s|%s|%s\\n" "$FROM_DAEMON" "$MIG_PARTED_SELECTED_CONFIG" "$MIGMANAGERD_GPUS" "$OVERRIDDEN" "$HOOK_ONLY" > {out}'
    hf = hooks(apply_start=[sh(script, envs={"OVERRIDDEN": "hook", "HOOK_ONLY": "h", "MIGMANAGERD_GPUS": "0,1"})])
    env = {"MIG_PARTED_SELECTED_CONFIG": "all-balanced", "MIGMANAGERD_GPUS": "0,1,2,3", "OVERRIDDEN": "caller"}
    HookRunner(hf, env).run("apply-start")
    assert out.read_text().strip() == "daemon|all-balanced|0,1|hook|h"


def test_workdir_is_the_working_directory(tmp_path):
    work = tmp_path / "work dir"
    work.mkdir()
    (work / "hooks.sh").write_text("marker() { pwd > result; }\n")
    hf = hooks(pre_apply_config=[sh(". ./hooks.sh; marker", workdir=str(work))])
    HookRunner(hf, {}).run("pre-apply-config")
    assert (work / "result").read_text().strip() == str(work)


def test_missing_workdir_fails_naming_it(tmp_path):
    missing = tmp_path / "gone"
    hf = hooks(apply_start=[sh("true", workdir=str(missing))])
    with pytest.raises(HookFailed) as info:
        HookRunner(hf, {}).run("apply-start")
    assert str(missing) in str(info.value) and info.value.exit_status is None


def test_non_zero_exit_stops_the_hook_list(tmp_path):
    out = tmp_path / "ran"
    hf = hooks(apply_start=[sh("exit 0"), sh("exit 3"), sh(f"touch {out}")])
    with pytest.raises(HookFailed) as info:
        HookRunner(hf, {}).run("apply-start")
    e = info.value
    assert (e.hook, e.index, e.command, e.exit_status) == ("apply-start", 1, "/bin/sh", 3)
    assert str(e) == "hook apply-start[1] (/bin/sh) failed with exit status 3"
    assert e.exit_code == EXIT_FAILED
    assert not out.exists()


def test_killed_by_signal_is_a_failure():
    hf = hooks(apply_exit=[sh("kill -TERM $$")])
    with pytest.raises(HookFailed) as info:
        HookRunner(hf, {}).run("apply-exit")
    assert info.value.exit_status == -15 and "killed by SIGTERM" in str(info.value)


def test_missing_command(tmp_path):
    cmd = str(tmp_path / "no-such-hook")
    hf = hooks(apply_start=[HookSpec(command=cmd, args=(), envs={}, workdir=None, loc=LOC)])
    with pytest.raises(HookFailed) as info:
        HookRunner(hf, {}).run("apply-start")
    e = info.value
    assert e.exit_status is None and e.command == cmd
    assert str(e) == f"hook apply-start[0] ({cmd}) could not be started: No such file or directory"


def test_command_not_executable(tmp_path):
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o644)
    hf = hooks(apply_start=[HookSpec(command=str(script), args=(), envs={}, workdir=None, loc=LOC)])
    with pytest.raises(HookFailed) as info:
        HookRunner(hf, {}).run("apply-start")
    assert "could not be started: Permission denied" in str(info.value)


def test_command_found_on_path_of_the_hook_environment(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    out = tmp_path / "out"
    tool = bindir / "my-hook"
    tool.write_text(f"#!/bin/sh\necho \"$@\" > {out}\n")
    os.chmod(tool, 0o755)
    spec = HookSpec(command="my-hook", args=("a", "b c"), envs={"PATH": f"{bindir}:/usr/bin:/bin"}, workdir=None, loc=LOC)
    HookRunner(hooks(apply_start=[spec]), {}).run("apply-start")
    assert out.read_text().strip() == "a b c"  # argv passed without a shell: "b c" stays one word


def test_output_lines_are_logged_with_hook_name(hook_log):
    hf = hooks(apply_exit=[sh("true"), sh("echo first; echo second >&2; printf 'no newline'")])
    HookRunner(hf, {}).run("apply-exit")
    got = messages(hook_log)
    assert "hook apply-exit[1]: first" in got
    assert "hook apply-exit[1]: second" in got
    assert "hook apply-exit[1]: no newline" in got
    assert not any(m.startswith("hook apply-exit[0]:") for m in got)


def test_failing_hook_output_is_logged(hook_log):
    hf = hooks(apply_start=[sh("echo why it failed; exit 1")])
    with pytest.raises(HookFailed):
        HookRunner(hf, {}).run("apply-start")
    assert "hook apply-start[0]: why it failed" in messages(hook_log)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def test_timeout_kills_the_whole_process_group(tmp_path, hook_log):
    pidfile = tmp_path / "child.pid"
    script = f"echo started; sleep 1000 & echo $! > {pidfile}; wait"
    hf = hooks(apply_start=[sh(script)])
    with pytest.raises(HookFailed) as info:
        HookRunner(hf, {}, timeout_s=1.0).run("apply-start")
    e = info.value
    assert e.exit_status is None and "timed out after 1s" in str(e)
    assert str(e).startswith("hook apply-start[0] (/bin/sh) timed out")
    child = int(pidfile.read_text())
    # the child may take a moment to be reaped by init after the kill
    for _ in range(100):
        if _gone(child):
            break
        time.sleep(0.05)
    assert _gone(child), f"sleep child {child} survived the timeout"
    # output written before the hang was visible
    assert "hook apply-start[0]: started" in messages(hook_log)


def test_timeout_when_a_left_behind_child_holds_the_output(tmp_path):
    """The hook's main process exits, but a child keeps stdout open: the hook
    is not finished, and the timeout kills the child too."""
    pidfile = tmp_path / "child.pid"
    hf = hooks(apply_start=[sh(f"sleep 1000 & echo $! > {pidfile}; exit 0")])
    with pytest.raises(HookFailed) as info:
        HookRunner(hf, {}, timeout_s=1.0).run("apply-start")
    assert info.value.exit_status is None
    child = int(pidfile.read_text())
    for _ in range(100):
        if _gone(child):
            break
        time.sleep(0.05)
    assert _gone(child)


def test_hooks_from_a_parsed_file(tmp_path):
    out = tmp_path / "out"
    text = f"""version: v1
hooks:
  apply-start:
    - command: /bin/sh
      args: ["-c", "echo $MIG_PARTED_SELECTED_CONFIG-$EXTRA > {out}"]
      envs: {{EXTRA: x}}
      workdir: {tmp_path}
"""
    HookRunner(parse_hooks(text, "hooks.yaml"), {"MIG_PARTED_SELECTED_CONFIG": "cfg"}).run("apply-start")
    assert out.read_text().strip() == "cfg-x"


def test_timeout_must_be_positive():
    with pytest.raises(ValueError):
        HookRunner(hooks(), {}, timeout_s=0)


def test_interrupted_wait_leaves_no_hook_processes(tmp_path, monkeypatch):
    pidfile = tmp_path / "child.pid"
    hf = hooks(apply_start=[sh(f"sleep 1000 & echo $! > {pidfile}; wait")])
    real_wait = __import__("subprocess").Popen.wait

    def interrupted_wait(self, timeout=None):
        if timeout is not None and timeout > 60:  # the runner's wait for the hook itself
            while not pidfile.exists() or not pidfile.read_text().strip():
                time.sleep(0.01)
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr("subprocess.Popen.wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        HookRunner(hf, {}, timeout_s=120).run("apply-start")
    child = int(pidfile.read_text())
    for _ in range(100):
        if _gone(child):
            break
        time.sleep(0.05)
    assert _gone(child)


def test_very_long_output_line_is_logged_in_pieces(hook_log):
    hf = hooks(apply_start=[sh("head -c 40000 /dev/zero | tr '\\0' x")])
    HookRunner(hf, {}).run("apply-start")
    pieces = [m for m in messages(hook_log) if m.startswith("hook apply-start[0]: ")]
    assert len(pieces) >= 3
    assert sum(len(m) - len("hook apply-start[0]: ") for m in pieces) == 40000


def test_hook_env_names_and_values():
    from migmanagerd.hooks.runner import hook_env

    env = hook_env(selected_config="all-balanced", config_file="/etc/c.yaml", hooks_file="/etc/h.yaml",
                   gpus=[3, 0, 1, 0], mode_only=True)
    assert env == {
        "MIG_PARTED_SELECTED_CONFIG": "all-balanced",
        "MIG_PARTED_CONFIG_FILE": "/etc/c.yaml",
        "MIG_PARTED_HOOKS_FILE": "/etc/h.yaml",
        "MIG_PARTED_SKIP_RESET": "false",
        "MIG_PARTED_MODE_CHANGE_ONLY": "true",
        "MIGMANAGERD_SELECTED_CONFIG": "all-balanced",
        "MIGMANAGERD_GPUS": "0,1,3",
    }
    assert hook_env(selected_config="x", config_file="c", hooks_file="h", gpus=[])["MIGMANAGERD_GPUS"] == ""
