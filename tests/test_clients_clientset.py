"""clients.yaml parsing: the happy path and one-line errors with file:line:col."""

from __future__ import annotations

import textwrap

import pytest

from migmanagerd.clients.clientset import (
    DEFAULT_TIMEOUT_S,
    load_clients,
    parse_clients,
    unit_name_problem,
)
from migmanagerd.errors import SpecError, UsageError

GOOD = textwrap.dedent(
    """\
    version: v1
    discover: stop
    stop-timeout: 30
    groups:
      - name: driver
        stop-before: [mode, config]
        units: [nvsm.service, nvidia-dcgm.service]
      - name: kubernetes
        stop-before: [mode]
        units: [dcgm-exporter.service, kubelet.service]
      - name: batch
        units: [slurmd.service, gpu-burn@0.service]
    """
)


def parse(text: str):
    return parse_clients(textwrap.dedent(text), "clients.yaml")


def error(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse(text)
    assert isinstance(info.value, UsageError)  # exit 2
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_file():
    clients = parse(GOOD)
    assert clients.discover == "stop"
    assert clients.stop_timeout_s == 30
    assert clients.start_timeout_s == DEFAULT_TIMEOUT_S
    assert [g.name for g in clients.groups] == ["driver", "kubernetes", "batch"]
    assert clients.groups[2].stop_before == ("mode", "config")  # the default
    assert clients.units_for("mode") == (
        "nvsm.service",
        "nvidia-dcgm.service",
        "dcgm-exporter.service",
        "kubelet.service",
        "slurmd.service",
        "gpu-burn@0.service",
    )
    assert clients.units_for("config") == (
        "nvsm.service",
        "nvidia-dcgm.service",
        "slurmd.service",
        "gpu-burn@0.service",
    )
    assert len(clients.units) == 6


def test_units_for_rejects_an_unknown_change():
    with pytest.raises(ValueError):
        parse(GOOD).units_for("reboot")


def test_minimal_file_defaults():
    clients = parse("version: v1\n")
    assert clients.discover == "refuse"
    assert clients.groups == ()
    assert clients.units_for("mode") == ()


def test_load_from_disk_and_missing(tmp_path):
    path = tmp_path / "clients.yaml"
    path.write_text(GOOD)
    assert load_clients(path).groups[0].units == ("nvsm.service", "nvidia-dcgm.service")
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=r"nope\.yaml.*file not found"):
        load_clients(missing)
    empty = load_clients(missing, missing_ok=True)
    assert empty.groups == () and empty.discover == "refuse"


def test_wrong_version():
    assert error("version: v2\n") == "clients.yaml:1:10: field 'version': unsupported version 'v2' (supported: v1)"


def test_unknown_top_key():
    message = error("version: v1\ngroup: []\n")
    assert message.startswith("clients.yaml:2:1: field 'group': unknown key 'group'")


def test_bad_discover_mode():
    assert error("version: v1\ndiscover: kill\n") == "clients.yaml:2:11: field 'discover': 'kill' is not one of: refuse, stop"


def test_bad_timeout():
    assert "must be at least 1" in error("version: v1\nstop-timeout: 0\n")
    assert "expected an integer" in error("version: v1\nstart-timeout: soon\n")


def test_unit_without_suffix_names_group_and_position():
    message = error(
        """\
        version: v1
        groups:
          - name: driver
            units: [nvsm.service, nvidia-dcgm]
        """
    )
    assert message.startswith("clients.yaml:4:27: group 'driver': field 'units[1]': 'nvidia-dcgm' is not a unit name")


def test_duplicate_unit_across_groups():
    message = error(
        """\
        version: v1
        groups:
          - name: a
            units: [x.service]
          - name: b
            units: [y.service, x.service]
        """
    )
    assert message.startswith("clients.yaml:6:24: group 'b': field 'units[1]': unit x.service is already listed in group 'a' (line 4)")


def test_duplicate_group_name():
    message = error(
        """\
        version: v1
        groups:
          - name: a
            units: [x.service]
          - name: a
            units: [y.service]
        """
    )
    assert "clients.yaml:5:5" in message and "duplicate group name 'a' (first defined at line 3)" in message


def test_unknown_group_key_and_missing_units():
    assert "unknown key 'stop_before'" in error("version: v1\ngroups:\n  - name: a\n    units: []\n    stop_before: [mode]\n")
    assert "missing required key 'units'" in error("version: v1\ngroups:\n  - name: a\n")


def test_bad_stop_before():
    assert "field 'stop-before[0]': 'reset' is not one of: mode, config" in error(
        "version: v1\ngroups:\n  - name: a\n    stop-before: [reset]\n    units: [x.service]\n"
    )
    assert "must name at least one of" in error(
        "version: v1\ngroups:\n  - name: a\n    stop-before: []\n    units: [x.service]\n"
    )
    assert "'mode' listed twice" in error(
        "version: v1\ngroups:\n  - name: a\n    stop-before: [mode, mode]\n    units: [x.service]\n"
    )


def test_wrong_types():
    assert "field 'groups': expected a list, got a mapping" in error("version: v1\ngroups: {a: 1}\n")
    assert "field 'units[0]': expected a string, got an integer" in error("version: v1\ngroups:\n  - name: a\n    units: [3]\n")


def test_duplicate_yaml_key():
    assert "duplicate key 'discover'" in error("version: v1\ndiscover: stop\ndiscover: refuse\n")


@pytest.mark.parametrize(
    "name",
    ["kubelet.service", "nvidia-persistenced.socket", "gpu-burn@0.service", "multi-user.target", "x\\x2dy.timer", "a:b.path"],
)
def test_valid_unit_names(name):
    assert unit_name_problem(name) is None


@pytest.mark.parametrize(
    "name,why",
    [
        ("", "empty"),
        ("kubelet", "must end with"),
        ("session-1.scope", "must end with"),
        ("gpu-burn@.service", "template"),
        (".service", "not a valid unit name"),
        ("a b.service", "not a valid unit name"),
        ("*.service", "not a valid unit name"),
        ("x" * 250 + ".service", "longer than 255"),
    ],
)
def test_invalid_unit_names(name, why):
    problem = unit_name_problem(name)
    assert problem is not None and why in problem
