"""``suggest``: exact against brute force, and its config round-trips through validate and apply."""

from __future__ import annotations

from functools import cache
from itertools import product
from pathlib import Path

import pytest
from apply_helpers import catalog, sim_node

from migmanagerd.cli.main import main
from migmanagerd.errors import UsageError
from migmanagerd.ondemand.suggest import Need, NoLayout, parse_need, suggest
from migmanagerd.planner.placement import plan_gpu
from migmanagerd.planner.types import Infeasible
from migmanagerd.spec.profile import MigProfile


def plain(model) -> list[tuple[str, int, int]]:
    return [
        (gi.full_ci.name, gi.memory_mib, gi.compute_slices)
        for gi in model.gi_profiles if not gi.attributes and gi.full_ci is not None
    ]


@cache
def legal(model, multiset: tuple[tuple[str, int], ...]) -> bool:
    target = tuple((MigProfile.parse(p), n) for p, n in multiset)
    return not isinstance(plan_gpu(model, (), target), Infeasible)


def brute_force(models, needs: list[tuple[int, Need]]) -> tuple[int, int, int] | None:
    """Every assignment of every single item to (GPU, profile): the best (GPUs, waste, compute)."""
    items = [need for n, need in needs for _ in range(n)]
    options = []
    for need in items:
        opts = []
        for g, model in enumerate(models):
            for profile, mib, compute in plain(model):
                if need.fits(profile, mib):
                    opts.append((g, profile, need.waste_mib(profile, mib), compute))
        options.append(opts)
    best = None
    for combo in product(*options):
        per_gpu: dict[int, dict[str, int]] = {}
        for g, profile, _, _ in combo:
            per_gpu.setdefault(g, {})
            per_gpu[g][profile] = per_gpu[g].get(profile, 0) + 1
        if not all(legal(models[g], tuple(sorted(c.items()))) for g, c in per_gpu.items()):
            continue
        score = (len(per_gpu), sum(w for _, _, w, _ in combo), sum(c for _, _, _, c in combo))
        if best is None or score < best:
            best = score
    return best


MIXES = [
    ["3x10GB"],
    ["1x20GB", "2x5GB"],
    ["2x20GB", "1x10GB"],
    ["1x40GB", "1x5GB"],
    ["2x9000MiB", "1x3g.20gb"],
    ["4x5GB"],
    ["1x4g.20gb", "2x10GB"],
]


@pytest.mark.parametrize("mix", MIXES, ids=lambda m: "+".join(m))
def test_suggest_matches_brute_force_on_small_mixes(mix: list[str]) -> None:
    a100 = catalog().get("A100-SXM4-40GB")
    a30 = catalog().get("A30-24GB")
    for models in ([a100, a100], [a30, a100]):
        needs = [parse_need(t) for t in mix]
        want = brute_force(models, needs)
        if want is None:
            with pytest.raises(NoLayout):
                suggest(list(enumerate(models)), needs)
            continue
        got = suggest(list(enumerate(models)), needs)
        assert (got.gpus_used, got.waste_mib, sum(g.pattern.compute for g in got.gpus if g.pattern)) == want
        # and the layout it names is legal and serves every item
        for g in got.gpus:
            if g.pattern is not None:
                assert legal(g.model, tuple(sorted(g.pattern.devices)))


def test_more_than_fits_is_refused_with_exit_1() -> None:
    a100 = catalog().get("A100-SXM4-40GB")
    with pytest.raises(NoLayout) as err:
        suggest([(0, a100)], [parse_need("3x20GB")])
    assert err.value.exit_code == 1 and "3x20GB" in str(err.value)


@pytest.mark.parametrize("bad", ["3", "x10GB", "0x10GB", "3x10", "3x10TB", "2x0GB"])
def test_bad_need_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_need(bad)


def test_printed_config_round_trips_through_validate_and_apply(tmp_path: Path, monkeypatch, capsys) -> None:
    backend = sim_node(tmp_path, "2xA100-SXM4-40GB")
    monkeypatch.setenv("MIGMANAGERD_SIM_STATE", str(backend.state_path))
    monkeypatch.setenv("MIGMANAGERD_BACKEND", "sim")
    monkeypatch.delenv("MIG_PARTED_SELECTED_CONFIG", raising=False)
    assert main(["suggest", "--need", "3x10GB", "--need", "2x20GB", "--name", "mix"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "suggested.yaml"
    path.write_text(text)
    assert "mix:" in text
    assert main(["validate", "-f", str(path), "--gpu", "A100-SXM4-40GB", "-c", "mix"]) == 0
    capsys.readouterr()
    assert main(["apply", "-f", str(path), "-c", "mix"]) == 0
    assert main(["assert", "-f", str(path), "-c", "mix"]) == 0
    profiles = sorted(
        str(MigProfile.parse(d))
        for gi in [g for i in range(2) for g in backend.gpu_instances(i)]
        for d in [backend.model_of(0).gi_profile_by_id(gi.profile_id).name]
    )
    assert len(profiles) == 5  # 3 for the 10GB needs, 2 for the 20GB ones, on 2 GPUs


def test_suggest_for_given_models_needs_no_node(capsys) -> None:
    assert main(["suggest", "--need", "1x40GB", "--gpu", "2xA100-SXM4-40GB"]) == 0
    out = capsys.readouterr().out
    assert '"7g.40gb": 1' in out and "devices: [0]" in out
    assert main(["suggest", "--need", "1x40GB", "--gpu", "NoSuchGPU"]) == 2
