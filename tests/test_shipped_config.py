"""The default files in config/ parse with the product's own parsers, and
every MIG layout in config.yaml fits every GPU model its device-filter admits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from migmanagerd.catalog.load import load_catalog
from migmanagerd.clients.clientset import load_clients
from migmanagerd.planner.node import admits, fits_model
from migmanagerd.service.selector import read_selector
from migmanagerd.spec.config import load_config
from migmanagerd.spec.hooks import load_hooks

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
# the models the default config must cover (catalog names)
REQUIRED_MODELS = ("A30-24GB", "A100-SXM4-40GB", "A100-SXM4-80GB", "H100-80GB", "H100-NVL-94GB", "H200-141GB")


@pytest.fixture(scope="module")
def config():
    return load_config(CONFIG_DIR / "config.yaml")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_basic_configs_present(config) -> None:
    assert {"all-disabled", "all-enabled", "all-balanced"} <= set(config.configs)
    (disabled,) = config.configs["all-disabled"].entries
    assert disabled.devices == "all" and not disabled.mig_enabled and not disabled.device_filters
    (enabled,) = config.configs["all-enabled"].entries
    assert enabled.devices == "all" and enabled.mig_enabled and enabled.mig_devices == ()


def test_every_entry_fits_every_model_it_admits(config, catalog) -> None:
    problems = []
    for cfg in config.configs.values():
        for entry in cfg.entries:
            if not entry.mig_enabled or not entry.device_filters:
                continue
            admitted = [m for m in catalog.models if admits(entry, m)]
            if not admitted:
                problems.append(f"{entry.where}: device-filter admits no catalog model")
            for model in admitted:
                reason = fits_model(entry, model)
                if reason is not None:
                    problems.append(f"{entry.where}: {model.name}: {reason}")
    assert problems == []


def test_filtered_configs_select_each_model_at_most_once(config, catalog) -> None:
    for cfg in config.configs.values():
        for model in catalog.models:
            hits = [e.position for e in cfg.entries if e.device_filters and admits(e, model)]
            assert len(hits) <= 1, f"config '{cfg.name}': {model.name} admitted by entries {hits}"


@pytest.mark.parametrize("model_name", REQUIRED_MODELS)
def test_required_model_has_balanced_and_every_profile(config, catalog, model_name: str) -> None:
    model = catalog.get(model_name)
    assert model is not None, model_name
    balanced = [e for e in config.configs["all-balanced"].entries if admits(e, model)]
    assert len(balanced) == 1
    assert fits_model(balanced[0], model) is None
    # balanced uses more than one size
    assert len({p.gi_name for p, _ in balanced[0].mig_devices}) >= 2
    for gi in model.gi_profiles:
        name = "all-" + gi.name.replace("+", ".")
        assert name in config.configs, f"{model_name}: no config {name}"
        (entry,) = [e for e in config.configs[name].entries if admits(e, model)]
        assert [(str(p), n) for p, n in entry.mig_devices] == [(gi.name, gi.max_count)]


def test_validate_command_accepts_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "migmanagerd", "validate", "-f", str(CONFIG_DIR / "config.yaml"), "-k", str(CONFIG_DIR / "hooks.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_hooks_file_runs_nothing() -> None:
    hooks = load_hooks(CONFIG_DIR / "hooks.yaml")
    assert hooks.hooks == {}


def test_clients_file(config) -> None:
    clients = load_clients(CONFIG_DIR / "clients.yaml")
    assert clients.discover == "refuse"
    units = clients.units_for("mode")
    for unit in ("nvsm.service", "nvidia-dcgm.service", "dcgm-exporter.service", "kubelet.service", "slurmd.service"):
        assert unit in units
    assert clients.units_for("config") == units
    # start order: DCGM before its exporter, both before the workload managers
    assert units.index("nvidia-dcgm.service") < units.index("dcgm-exporter.service") < units.index("kubelet.service")


def test_override_selects_an_existing_config(config) -> None:
    sel = read_selector(CONFIG_DIR / "override.conf")
    assert sel.selected_config == "all-disabled"
    assert sel.selected_config in config.configs
    assert (sel.config_file, sel.hooks_file) == (None, None)


def _entries(cfg) -> list[tuple]:
    return [(e.devices, e.device_filters, e.mig_enabled, e.mig_devices) for e in cfg.entries]


def test_every_generated_config_is_shipped_unchanged(config, catalog, tmp_path) -> None:
    """config.yaml has every config `generate-config` writes for the catalog's
    models, with the same entries (tools/gen_config_yaml.py rewrites it)."""
    out = tmp_path / "generated.yaml"
    models = [arg for name in catalog.names for arg in ("--model", name)]
    proc = subprocess.run(
        [sys.executable, "-m", "migmanagerd", "generate-config", *models, "-f", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    generated = load_config(out)
    missing = sorted(set(generated.configs) - set(config.configs))
    assert missing == []
    changed = [name for name, cfg in generated.configs.items() if _entries(cfg) != _entries(config.configs[name])]
    assert changed == []
    # nvidia-mig-parted's config-default.yaml names the generator cannot write
    # (GB200 189GB: no known PCI device id) are there too, hand-written
    assert {"all-3g.95gb", "all-4g.95gb", "all-7g.189gb"} <= set(config.configs)
    assert len(config.configs) >= 81


def test_shipped_config_is_what_the_tool_writes() -> None:
    """Nobody edited config.yaml by hand without the tool (or the other way round)."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "gen_config_yaml.py"
    proc = subprocess.run([sys.executable, str(tool), "/dev/stdout"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (CONFIG_DIR / "config.yaml").read_text(encoding="utf-8")
