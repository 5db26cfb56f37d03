"""The reboot guard: one reboot per config, never a loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from migmanagerd.service.paths import NodePaths
from migmanagerd.service.reboot_guard import (
    REARM_COMMAND,
    RebootAction,
    arm_marker,
    clear_marker,
    decide_reboot,
    guard_reboot,
    rearm,
)
from migmanagerd.service.state import RebootMarker, State, StateStore


def marker(config: str = "all-1g.10gb", boot: str = "boot-1") -> RebootMarker:
    return RebootMarker(config, "2026-01-01T00:00:00Z", boot, (0, 1))


def test_no_marker_and_allowed_reboots_and_arms() -> None:
    d = decide_reboot(None, "boot-1", "all-1g.10gb", [1, 0, 1], True, now="T")
    assert d.action is RebootAction.REBOOT
    assert d.marker == RebootMarker("all-1g.10gb", "T", "boot-1", (0, 1))
    assert not d.action.failed


def test_no_marker_and_disabled_fails_with_manual_instructions() -> None:
    d = decide_reboot(None, "boot-1", "all-1g.10gb", [2], False)
    assert d.action is RebootAction.FAIL_NO_REBOOT
    assert d.marker is None
    assert d.action.failed
    assert "config 'all-1g.10gb'" in d.message and "GPU 2" in d.message
    assert "--no-reboot" in d.message and "systemctl reboot" in d.message
    assert "\n" not in d.message


def test_disabled_by_names_the_knob() -> None:
    d = decide_reboot(None, "b", "c", [0], False, disabled_by="MIGMANAGERD_NO_REBOOT=1")
    assert "MIGMANAGERD_NO_REBOOT=1" in d.message


def test_marker_from_this_boot_waits() -> None:
    for allow in (True, False):
        d = decide_reboot(marker(boot="boot-1"), "boot-1", "all-1g.10gb", [0, 1], allow)
        assert d.action is RebootAction.WAIT
        assert d.marker is None
        assert not d.action.failed


def test_marker_from_earlier_boot_same_config_fails_with_rearm_command() -> None:
    d = decide_reboot(marker(boot="boot-1"), "boot-2", "all-1g.10gb", [0, 1], True)
    assert d.action is RebootAction.FAIL_ALREADY_REBOOTED
    assert d.marker is None
    assert REARM_COMMAND in d.message
    assert "migmanagerd status" in d.message
    assert "GPUs 0, 1" in d.message and "boot-1" in d.message


def test_marker_for_another_config_allows_that_config_one_reboot() -> None:
    d = decide_reboot(marker("all-disabled", "boot-1"), "boot-2", "all-1g.10gb", [0], True)
    assert d.action is RebootAction.REBOOT
    assert d.marker is not None and d.marker.config == "all-1g.10gb" and d.marker.boot_id == "boot-2"


@pytest.mark.parametrize("marker_boot, current", [("", "boot-2"), ("boot-1", ""), ("", "")])
def test_unknown_boot_id_never_reboots_twice(marker_boot: str, current: str) -> None:
    d = decide_reboot(marker("other-config", marker_boot), current, "all-1g.10gb", [0], True)
    assert d.action is RebootAction.FAIL_ALREADY_REBOOTED


# --- with state.json, across simulated boots -------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> NodePaths:
    p = NodePaths.under_root(tmp_path)
    p.boot_id_file.parent.mkdir(parents=True)
    return p


def boot(paths: NodePaths, boot_id: str) -> StateStore:
    paths.boot_id_file.write_text(boot_id + "\n")
    return StateStore(paths)


def test_two_failing_boots_request_exactly_one_reboot(node: NodePaths) -> None:
    actions = []
    for n in range(1, 5):
        store = boot(node, f"boot-{n}")
        # the service runs twice in each boot (e.g. restarted by hand)
        for _ in range(2):
            actions.append(guard_reboot(store, "all-1g.10gb", [0], True).action)
    assert actions.count(RebootAction.REBOOT) == 1
    assert actions == [
        RebootAction.REBOOT,
        RebootAction.WAIT,
        *[RebootAction.FAIL_ALREADY_REBOOTED] * 6,
    ]


def test_marker_is_persisted_before_the_reboot(node: NodePaths) -> None:
    store = boot(node, "boot-1")
    d = guard_reboot(store, "all-1g.10gb", [3], True)
    assert d.action is RebootAction.REBOOT
    assert StateStore(node).load().state.reboot_guard == d.marker


def test_successful_mode_change_clears_and_a_later_change_may_reboot_again(node: NodePaths) -> None:
    store = boot(node, "boot-1")
    assert guard_reboot(store, "all-1g.10gb", [0], True).action is RebootAction.REBOOT
    store = boot(node, "boot-2")
    # the reboot worked: the caller sees the right mode and clears the marker
    assert clear_marker(store) is True
    assert store.load().state.reboot_guard is None
    assert clear_marker(store) is False
    # weeks later the operator selects all-disabled, which needs a reboot again
    store = boot(node, "boot-3")
    assert guard_reboot(store, "all-disabled", [0], True).action is RebootAction.REBOOT


def test_rearm_allows_exactly_one_more_reboot(node: NodePaths) -> None:
    store = boot(node, "boot-1")
    guard_reboot(store, "c", [0], True)
    store = boot(node, "boot-2")
    assert guard_reboot(store, "c", [0], True).action is RebootAction.FAIL_ALREADY_REBOOTED
    assert rearm(store) is True
    assert guard_reboot(store, "c", [0], True).action is RebootAction.REBOOT
    store = boot(node, "boot-3")
    assert guard_reboot(store, "c", [0], True).action is RebootAction.FAIL_ALREADY_REBOOTED


def test_guard_keeps_the_rest_of_the_state(node: NodePaths) -> None:
    store = boot(node, "boot-1")
    store.save(State(selected_config="c", integrations={"x": 1}))
    guard_reboot(store, "c", [0], True)
    clear_marker(store)
    assert store.load().state == State(selected_config="c", integrations={"x": 1})


def test_disabled_reboot_does_not_arm(node: NodePaths) -> None:
    store = boot(node, "boot-1")
    d = guard_reboot(store, "c", [0], False)
    assert d.action is RebootAction.FAIL_NO_REBOOT
    assert store.load().state.reboot_guard is None


def test_arm_marker_overwrites(node: NodePaths) -> None:
    store = boot(node, "boot-1")
    arm_marker(store, marker("a"))
    arm_marker(store, marker("b"))
    assert store.load().state.reboot_guard == marker("b")
