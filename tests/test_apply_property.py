"""Property: from any layout to any layout that fits, one apply reaches the
target, keeps the UUID of every device the plan keeps, and never writes more
than emptying the GPU and rebuilding it would."""

from __future__ import annotations

import itertools
from collections import Counter
from functools import cache

from apply_helpers import catalog, engine, layout, ops, sim_node
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migmanagerd.planner.placement import plan_gpu
from migmanagerd.planner.types import GpuPlan
from migmanagerd.spec.config import parse_config
from migmanagerd.spec.profile import MigProfile

MODEL = "A100-SXM4-40GB"


@cache
def feasible_targets() -> tuple[tuple[tuple[str, int], ...], ...]:
    """Every multiset of plain A100-40GB profiles (full CIs, plus 1c.3g.20gb) that fits one GPU."""
    model = catalog().get(MODEL)
    names = ["1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb", "1c.3g.20gb"]
    out = []
    for counts in itertools.product(range(8), range(5), range(4), range(3), range(2), range(2), range(3)):
        target = tuple((n, c) for n, c in zip(names, counts, strict=True) if c)
        if sum(counts) > 7:
            continue
        wanted = [(MigProfile.parse(n), c) for n, c in target]
        if isinstance(plan_gpu(model, (), wanted), GpuPlan):
            out.append(target)
    return tuple(out)


def _config(target: tuple[tuple[str, int], ...]):
    devices = ", ".join(f'"{n}": {c}' for n, c in target)
    text = f"version: v1\nmig-configs:\n  t:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {{{devices}}}\n"
    return parse_config(text, "t.yaml").configs["t"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_layout_to_any_layout(tmp_path_factory, data):
    targets = feasible_targets()
    first = data.draw(st.sampled_from(targets), label="from")
    second = data.draw(st.sampled_from(targets), label="to")
    backend = sim_node(tmp_path_factory.mktemp("node"), f"1x{MODEL}")
    eng = engine(backend)
    assert eng.apply(_config(first)).exit_code == 0
    before = layout(backend)[0]
    plan = eng.plan(_config(second))
    kept = {u for d in plan.gpu(0).result.keep for u in d.uuids}
    spent_before = Counter(ops(backend))

    report = eng.apply(_config(second))

    assert report.exit_code == 0
    assert eng.assert_config(_config(second)) == []
    now = layout(backend)[0]
    assert kept <= {u for d in now[2] for u in d[3].split(",")}
    spent = sum((Counter(ops(backend)) - spent_before).values())
    # destroying every GI and CI there, then creating every GI and CI wanted
    cis = lambda devs: sum(d[0].count(",") + 1 if "[cis=" in d[0] else 1 for d in devs)  # noqa: E731
    rebuild = len(before[2]) + cis(before[2]) + len(now[2]) + cis(now[2])
    assert spent <= rebuild
    if kept:
        assert spent < rebuild
