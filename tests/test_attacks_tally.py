"""docs/fault-matrix.md states how many attack and control cases the suite
runs; this keeps the statement true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_attack_tally_is_documented():
    files = sorted(str(p) for p in (REPO / "tests").glob("test_attacks_*.py") if p.name != Path(__file__).name)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )
    cases = [line for line in proc.stdout.splitlines() if "::" in line]
    assert cases, proc.stdout + proc.stderr
    controls = [c for c in cases if "::test_control_" in c]
    doc = (REPO / "docs" / "fault-matrix.md").read_text()
    match = re.search(r"Attack cases: (\d+),.*?Control cases: (\d+)", doc, re.S)
    assert match, "docs/fault-matrix.md lost its attack tally"
    assert (int(match.group(1)), int(match.group(2))) == (len(cases) - len(controls), len(controls))
