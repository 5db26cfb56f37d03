"""Layout pictures: rows, grouping of identical GPUs, marks, colour only on request."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from apply_helpers import sim_node

from migmanagerd.cli.main import main
from migmanagerd.cli.picture import CREATE, DESTROY, SLOT_WIDTH, Box, Row, draw, index_ranges

REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
version: v1
mig-configs:
  balanced:
    - devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 2
        "2g.10gb": 1
        "3g.20gb": 1
  sevens:
    - devices: [0, 1, 2]
      mig-enabled: true
      mig-devices:
        "1g.5gb": 7
    - devices: [3]
      mig-enabled: true
      mig-devices:
        "7g.40gb": 1
"""


def test_index_ranges() -> None:
    assert index_ranges([0, 1, 2, 3, 5, 7, 8]) == "0-3,5,7-8"
    assert index_ranges([4]) == "4"


def test_identical_gpus_share_a_row_and_boxes_span_their_slices() -> None:
    boxes = (Box(0, 4, "3g.20gb"), Box(4, 2, "2g.10gb", CREATE), Box(7, 1, "1g.5gb", DESTROY))
    rows = [Row(i, "A100-SXM4-40GB", 8, (("", boxes),)) for i in range(8)]
    rows.append(Row(8, "A100-SXM4-40GB", 8, (("", ()),)))
    lines = draw(rows, colour=False)
    assert lines[0].startswith("slot")
    assert lines[1].startswith("GPUs 0-7 A100-SXM4-40GB")
    assert lines[2].startswith("GPU 8")
    body = lines[1][len("GPUs 0-7 A100-SXM4-40GB "):]
    assert body == (
        "[3g.20gb".ljust(4 * SLOT_WIDTH - 1) + "]"
        + "[+2g.10gb".ljust(2 * SLOT_WIDTH - 1) + "]"
        + "." * SLOT_WIDTH
        + "[-1g.5gb".ljust(SLOT_WIDTH - 1) + "]"
    )
    assert all("\x1b[" not in line for line in lines)
    coloured = draw(rows, colour=True)
    assert "\x1b[42;30m[+2g.10gb" in coloured[1]


def _node(tmp_path: Path, monkeypatch) -> Path:
    backend = sim_node(tmp_path, "4xA100-SXM4-40GB")
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(backend.state_path))
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "sim")
    monkeypatch.delenv("MIG_PARTED_SELECTED_CONFIG", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG)
    return cfg


def test_plan_picture_shows_before_and_after(tmp_path: Path, monkeypatch, capsys) -> None:
    cfg = _node(tmp_path, monkeypatch)
    assert main(["apply", "-f", str(cfg), "-c", "balanced"]) == 0
    capsys.readouterr()
    assert main(["plan", "-f", str(cfg), "-c", "sevens", "--picture", "--no-color"]) == 0
    out = capsys.readouterr().out
    text, picture = out.split("\n\n", 1)
    assert text.splitlines()[1].startswith("GPU 0 (A100-SXM4-40GB): MIG enabled; keep")  # the script text stays
    lines = picture.splitlines()
    assert lines[1].startswith("GPUs 0-2 A100-SXM4-40GB now [-2g.10gb")
    assert "[-3g.20gb" in lines[1] and "[1g.5gb" in lines[1]  # kept ones carry no mark
    assert lines[2].lstrip().startswith("new [+1g.5gb")
    assert lines[3].startswith("GPU 3    A100-SXM4-40GB now [-2g.10gb")
    assert lines[4].lstrip().startswith("new [+7g.40gb")
    # without --picture and not on a terminal: the text only
    assert main(["plan", "-f", str(cfg), "-c", "sevens"]) == 0
    assert "slot" not in capsys.readouterr().out


def test_status_on_a_terminal_draws_in_colour(tmp_path: Path, monkeypatch, capsys) -> None:
    cfg = _node(tmp_path, monkeypatch)
    assert main(["apply", "-f", str(cfg), "-c", "balanced"]) == 0
    capsys.readouterr()
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "migmanagerd", "status", "-f", str(cfg)], cwd=REPO, env=env,
                            stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    out = b"".join(chunks).decode()
    assert "GPUs 0-3 A100-SXM4-40GB" in out
    assert "\x1b[47;30m[3g.20gb" in out
