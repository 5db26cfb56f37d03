"""The repository refers to nothing outside it: no absolute paths of a
development machine, no documents it does not contain, no team-process words."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Built from pieces so this file does not match itself.
FORBIDDEN = {
    "an absolute path of the development machine": re.compile("/" + r"work/|/home/\w+/"),
    "a document that is not in the repository": re.compile("architecture" + r"\.md|mig-geometry-" + "facts|facts " + "sheet"),
    "team-process words": re.compile(r"\bthe lead" + "'s|\\b[A-Z]'s module|not built " + r"yet|\bissue: \""),
}


def tracked_text_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("git or a git checkout is missing: cannot list the tracked files")
    names = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    files = []
    for name in names.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and not path.is_symlink():
            files.append(path)
    return files


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_no_tracked_file_refers_outside_the_repository(what):
    pattern = FORBIDDEN[what]
    hits = []
    for path in tracked_text_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary
        for n, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, f"{what}:\n" + "\n".join(hits)


def test_docs_links_name_files_that_exist():
    """Every docs/*.md a document or module names is in the repository."""
    missing = set()
    for path in tracked_text_files():
        if path.suffix not in (".md", ".py", ".yaml"):
            continue
        for ref in re.findall(r"docs/([\w-]+\.md)", path.read_text(errors="replace")):
            if not (ROOT / "docs" / ref).is_file():
                missing.add(f"{path.relative_to(ROOT)} -> docs/{ref}")
    assert not missing, sorted(missing)
