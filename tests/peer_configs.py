"""nvidia-mig-parted's own A100-SXM4-40GB config-test inputs, regenerated.

The peer's pkg/mig/config tests (TestGetSetMigConfig and friends) apply every
config its ``A100_SXM4_40GB`` config group enumerates (known_configs.go).
That enumeration depends on Go slice semantics: the accumulator is sorted in
place while recursive calls append to a backing array they share, so a
child's append and sort can rewrite what its parent sees. Reproducing the
growth rule (capacity 0, 1, 2, 4, 8, …) and the in-place sort is what makes
the list come out at exactly the peer's 754 configs.

Running the enumeration takes about 45 s of CPU, so the tests read its result
from ``data/mig_parted_a100_40gb_configs.json``;
``test_packing.py::test_peer_enumeration_matches_the_stored_list`` checks, in
every run, that the two agree.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STORED = Path(__file__).resolve().parent / "data" / "mig_parted_a100_40gb_configs.json"

# The peer's per-profile maxima for its enumeration (known_configs.go).
A100_40GB_MAX = {
    "1c.1g.5gb": 7, "1c.1g.5gb+me": 1, "1c.2g.10gb": 6, "2c.2g.10gb": 3,
    "1c.3g.20gb": 6, "2c.3g.20gb": 2, "3c.3g.20gb": 2, "1c.4g.20gb": 4,
    "2c.4g.20gb": 2, "4c.4g.20gb": 1, "1c.7g.40gb": 7, "2c.7g.40gb": 3,
    "3c.7g.40gb": 2, "4c.7g.40gb": 1, "7c.7g.40gb": 1,
}  # fmt: skip


def _gc(name: str) -> tuple[int, int, str]:
    c, g = name.split(".")[:2]
    return int(g[:-1]), int(c[:-1]), "me" if "+me" in name else ""


def _peer_string(name: str) -> str:
    """go-nvlib's String(): the ``Nc.`` prefix is dropped when C == G."""
    g, c, _ = _gc(name)
    return name.split(".", 1)[1] if c == g else name


def _flatten(config: dict[str, int]) -> list[str]:
    items = [n for n, k in config.items() for _ in range(k)]
    return sorted(items, key=lambda n: (-_gc(n)[0], -_gc(n)[1], [-ord(ch) for ch in _gc(n)[2]] + [0]))


@dataclass
class _GoSlice:
    array: list[str | None]
    length: int
    cap: int

    def append(self, item: str) -> _GoSlice:
        if self.length < self.cap:
            self.array[self.length] = item  # shared with every other view
            return _GoSlice(self.array, self.length + 1, self.cap)
        cap = max(self.length + 1, 2 * self.cap)
        array = [*self.array[: self.length], item] + [None] * (cap - self.length - 1)
        return _GoSlice(array, self.length + 1, cap)


@cache
def a100_40gb_configs() -> tuple[tuple[tuple[str, int], ...], ...]:
    """The peer's enumerated configs (stored), each as sorted (profile, count) pairs."""
    return tuple(tuple(sorted(c.items())) for c in json.loads(STORED.read_text(encoding="utf-8")))


def enumerate_a100_40gb_configs() -> tuple[tuple[tuple[str, int], ...], ...]:
    """The peer's enumeration, run (slow), in the peer's order."""
    devices = _flatten(A100_40GB_MAX)
    found: dict[str, Counter[str]] = {}

    def visit(view: _GoSlice) -> bool:
        mps = [x for x in view.array[: view.length] if x is not None]
        cis = 0
        per_gi: Counter[int] = Counter()
        mes: Counter[int] = Counter()
        for n in mps:
            g, c, attr = _gc(n)
            cis += c
            per_gi[g] += c
            if attr:
                mes[g] += 1
        if per_gi[1] > 1 and mes[1] > 0:
            return False
        if cis > 7 or sum(per_gi) > 7:
            return False
        mps.sort(key=_peer_string)
        view.array[: view.length] = mps  # the peer sorts in place
        found.setdefault(str([_peer_string(n) for n in mps]), Counter(mps))
        return cis < 7

    def walk(i: int, acc: _GoSlice) -> None:
        acc = acc.append(devices[i])
        if not visit(acc):
            return
        for j in range(i + 1, len(devices)):
            walk(j, acc)

    for i in range(len(devices)):
        walk(i, _GoSlice([], 0, 0))
    return tuple(tuple(sorted(c.items())) for c in found.values())
