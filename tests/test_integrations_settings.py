"""integrations.yaml: defaults, a full file, and errors that point at file:line:col."""

from __future__ import annotations

import pytest

from migmanagerd.errors import SpecError, UsageError
from migmanagerd.integrations.settings import (
    DEFAULT_METRICS_PATH,
    IntegrationSettings,
    load_integrations,
    parse_integrations,
)

FULL = """\
version: v1
slurm:
  enabled: true
  gres_file: /etc/slurm/gres.conf
  nodename_file: /etc/slurm/node-gres.fragment
  node_name: gpu-07
  mig_files: parent-and-caps
  drain:
    enabled: true
    reason: "mig change"
    timeout_s: 600
    poll_s: 5
  restart_slurmd: false
  slurmd_unit: slurmd.service
  scontrol: /usr/bin/scontrol
  command_timeout_s: 20
  root: /srv/fakeroot
cdi:
  enabled: true
  unit: null
  command: [nvidia-ctk, cdi, generate, --output=/var/run/cdi/nvidia.yaml]
  timeout_s: 30
metrics:
  enabled: true
  path: /var/lib/node-exporter/mig.prom
"""


def test_missing_file_turns_everything_off(tmp_path):
    settings = load_integrations(tmp_path / "absent.yaml")
    assert settings == IntegrationSettings()
    assert not settings.any_enabled


def test_comment_only_file_is_all_off(tmp_path):
    path = tmp_path / "integrations.yaml"
    path.write_text("# shipped example\n# version: v1\n")
    assert not load_integrations(path).any_enabled


def test_full_file_is_read():
    s = parse_integrations(FULL, "integrations.yaml")
    assert s.slurm.enabled and s.slurm.node_name == "gpu-07"
    assert s.slurm.nodename_file == "/etc/slurm/node-gres.fragment"
    assert s.slurm.mig_files == "parent-and-caps"
    assert (s.slurm.drain.enabled, s.slurm.drain.reason, s.slurm.drain.timeout_s, s.slurm.drain.poll_s) == (
        True, "mig change", 600, 5)
    assert s.slurm.restart_slurmd is False and s.slurm.root == "/srv/fakeroot"
    assert s.slurm.scontrol == "/usr/bin/scontrol" and s.slurm.command_timeout_s == 20
    assert s.cdi.unit is None
    assert s.cdi.command == ("nvidia-ctk", "cdi", "generate", "--output=/var/run/cdi/nvidia.yaml")
    assert s.cdi.timeout_s == 30
    assert s.metrics.path == "/var/lib/node-exporter/mig.prom"


def test_defaults_are_off_and_node_name_is_the_short_hostname():
    s = parse_integrations("version: v1\nslurm: {enabled: true}\n", "i.yaml", hostname="gpu-01")
    assert s.slurm.node_name == "gpu-01"
    assert not s.slurm.drain.enabled
    assert not s.cdi.enabled and s.cdi.unit == "nvidia-cdi-refresh.service"
    assert not s.metrics.enabled and s.metrics.path == DEFAULT_METRICS_PATH


@pytest.mark.parametrize(
    "text, expected",
    [
        ("slurm: {}\n", "i.yaml:1:1: integrations: missing required key 'version'"),
        ("version: v2\n", "i.yaml:1:10: integrations: field 'version': unsupported version 'v2'"),
        ("version: v1\nslurm:\n  enabled: yes please\n",
         "i.yaml:3:12: integrations: field 'slurm.enabled': expected true or false, got a string"),
        ("version: v1\nslurm:\n  drainn: {}\n", "i.yaml:3:3: integrations: field 'slurm.drainn': unknown key 'drainn'"),
        ("version: v1\nslurm:\n  drain:\n    timeout_s: -1\n",
         "i.yaml:4:16: integrations: field 'slurm.drain.timeout_s': must be at least 0, got -1"),
        ("version: v1\nslurm:\n  drain:\n    poll_s: 0\n",
         "i.yaml:4:13: integrations: field 'slurm.drain.poll_s': must be at least 1"),
        ("version: v1\nslurm:\n  gres_file: gres.conf\n",
         "i.yaml:3:14: integrations: field 'slurm.gres_file': must be an absolute path"),
        ("version: v1\nslurm:\n  gres_file: /etc/x\n  nodename_file: /etc/x\n",
         "i.yaml:4:18: integrations: field 'slurm.nodename_file': gres_file and nodename_file must be different"),
        ("version: v1\nslurm:\n  slurmd_unit: slurmd\n",
         "i.yaml:3:16: integrations: field 'slurm.slurmd_unit': 'slurmd' is not a systemd service unit name"),
        ("version: v1\nslurm:\n  node_name: 'gpu 01'\n",
         "i.yaml:3:14: integrations: field 'slurm.node_name': 'gpu 01' is not a Slurm node name"),
        ("version: v1\nslurm:\n  mig_files: all\n",
         "i.yaml:3:14: integrations: field 'slurm.mig_files': must be one of cap, parent-and-caps"),
        ("version: v1\ncdi:\n  command: []\n",
         "i.yaml:3:12: integrations: field 'cdi.command': must name a program"),
        ("version: v1\ncdi:\n  command: [nvidia-ctk, 3]\n",
         "i.yaml:3:25: integrations: field 'cdi.command[1]': expected a string, got an integer"),
        ("version: v1\nmetrics:\n  path: /var/lib/x.txt\n",
         "i.yaml:3:9: integrations: field 'metrics.path': must end in .prom"),
        ("version: v1\nmetrics: true\n", "i.yaml:2:10: integrations: field 'metrics': expected a mapping"),
        ("version: v1\nversion: v1\n", "i.yaml:2:1: duplicate key 'version'"),
    ],
)
def test_errors_name_the_place(text, expected):
    with pytest.raises(SpecError) as info:
        parse_integrations(text, "i.yaml", hostname="h")
    assert str(info.value).startswith(expected), str(info.value)
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_unreadable_file_is_a_usage_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read file"):
        load_integrations(tmp_path)  # a directory
