#!/usr/bin/env python3
"""Write config/config.yaml: every config ``migmanagerd generate-config`` makes
for the models of the GPU catalog, plus a few hand-written ones.

nvidia-mig-parted regenerates its config.yaml from the GPUs present at every
boot, so a node may have selected any config name its generator knows. The
shipped file carries the names of every catalog model at once (each entry
device-filtered), so such a selection keeps working after migration.
tests/test_shipped_config.py checks the file against ``generate-config``
output, so run this after changing the catalog or the generator:

    .venv/bin/python tools/gen_config_yaml.py [OUTPUT]   # default config/config.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from migmanagerd.apply.configtext import ConfigText, EntryText, render_config_file
from migmanagerd.apply.generate import generate
from migmanagerd.catalog.load import load_catalog

HEADER = """\
MIG configurations for migmanagerd (nvidia-mig-parted "version: v1" format).

Select one with `migmanagerd select NAME` (it writes
/etc/systemd/system/nvidia-mig-manager.service.d/override.conf); it is
applied at every boot by nvidia-mig-manager.service.

Each "PROFILE: N" under mig-devices is N MIG devices (compute instances);
for the full-size profiles below that is N GPU instances, each holding one
compute instance that spans it. "1c.3g.20gb: 2" would be one 3g.20gb GPU
instance holding two 1-slice compute instances, as in nvidia-mig-parted
(docs/config-format.md). GPUs that no entry of the selected config selects
(for example another GPU model than an entry's device-filter names) are left
as they are.

The configs come from `migmanagerd generate-config` run for every GPU model
of the catalog (tools/gen_config_yaml.py), so every config name
nvidia-mig-parted generates on a node exists here too. Profile sizes differ
per GPU model, so entries carry a device-filter (PCI device id 0xDDDD and
vendor 0x10DE, as `nvidia-smi -q` shows under "Device Id"); "N" is the most
instances of a profile that fit. `migmanagerd validate` checks every entry
against the GPU catalog.
This file is a conffile: your edits survive package upgrades."""

# Names nvidia-mig-parted's config-default.yaml has that the generator cannot
# write: the GB200 189GB variant's PCI device id is unknown to the catalog, so
# no device-filtered entry can select it. Written as the peer writes them
# (no device-filter).
HAND_WRITTEN = (
    ConfigText("all-3g.95gb", (EntryText("all", (), True, (("3g.95gb", 2),), comment="GB200 189GB"),)),
    ConfigText("all-4g.95gb", (EntryText("all", (), True, (("4g.95gb", 1),), comment="GB200 189GB"),)),
    ConfigText("all-7g.189gb", (EntryText("all", (), True, (("7g.189gb", 1),), comment="GB200 189GB"),)),
)


def render() -> str:
    catalog = load_catalog()
    generated = generate(list(catalog.models))
    names = {c.name for c in generated}
    extras = [c for c in HAND_WRITTEN if c.name not in names]
    return render_config_file([*generated, *extras], header=HEADER)


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    out.write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
