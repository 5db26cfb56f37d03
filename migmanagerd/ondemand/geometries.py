"""Allowed MIG geometries per GPU model: HAMi's ``knownMigGeometries``, or the catalog's.

File format (HAMi's ``device-config.yaml``, read unchanged; only the
``nvidia.knownMigGeometries`` list is used, every other key is ignored)::

    nvidia:
      knownMigGeometries:
      - models: ["A100-SXM4-40GB", "A100-PCIE-40GB"]
        allowedGeometries:
          - - {name: 1g.5gb, memory: 5120, count: 7}
          - - {name: 2g.10gb, memory: 10240, count: 3}
            - {name: 1g.5gb, memory: 5120, count: 1}

Semantics as HAMi has them: a GPU takes the geometries of the first entry one
of whose ``models`` is a substring of its NVML product name (we also accept a
catalog name or alias there); ``memory`` (MiB) is what an instance of that
profile offers a request. A geometry that is not a legal layout of a model
the entry names is a ``SpecError`` at its file:line.

Without a file, every *maximal* layout of the model's plain profiles (no
``+me``/``-me``/``+gfx`` variants) is allowed: no further instance fits.
Order: most instances first, then smaller instances first, so a request
takes the geometry that leaves the most room for others (as HAMi's example
list does: ``1g.5gb x7`` before ``2g.10gb x3 + 1g.5gb`` before ``7g.40gb``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from migmanagerd.catalog.load import Catalog, load_catalog
from migmanagerd.catalog.model import GpuModel
from migmanagerd.errors import SourceLocation, SpecError
from migmanagerd.ondemand.layouts import fits, legal_multisets
from migmanagerd.planner.placement import plan_gpu
from migmanagerd.planner.types import Infeasible
from migmanagerd.spec.profile import MigProfile, ProfileNameError
from migmanagerd.spec.source import (
    YNode,
    check_keys,
    load_yaml_file,
    load_yaml_text,
    require_int,
    require_map,
    require_seq,
    require_str,
)
from migmanagerd.spec.trust import read_trusted

# The ConfigMap key HAMi reads it from; the same name next to config.yaml.
DEVICE_CONFIG_NAME = "device-config.yaml"


@dataclass(frozen=True)
class GeometryItem:
    profile: str  # canonical MIG device name
    memory_mib: int
    count: int


@dataclass(frozen=True)
class Geometry:
    """One allowed layout of a GPU: profiles with counts, in file order."""

    items: tuple[GeometryItem, ...]
    where: str = "catalog"  # file:line, or "catalog"

    @property
    def target(self) -> tuple[tuple[MigProfile, int], ...]:
        return _target(tuple((i.profile, i.count) for i in self.items))

    def describe(self) -> str:
        return " + ".join(f"{i.profile} x{i.count}" for i in self.items)


@dataclass(frozen=True)
class ModelGeometries:
    models: tuple[str, ...]
    geometries: tuple[Geometry, ...]
    loc: SourceLocation | None = None


@dataclass(frozen=True)
class AllowedGeometries:
    """Where the geometries came from and the entries, in file order."""

    source: str  # the file, or "catalog"
    entries: tuple[ModelGeometries, ...] = ()

    def for_gpu(self, product_name: str, model: GpuModel | None, catalog: Catalog | None = None) -> tuple[Geometry, ...]:
        """The geometries a GPU may take: the first matching entry's, else the catalog's."""
        for entry in self.entries:
            if any(_names_gpu(n, product_name, model, catalog) for n in entry.models):
                return entry.geometries
        if model is None:
            return ()
        return catalog_geometries(model)

    def memory_mib(self, product_name: str, model: GpuModel | None, profile: str, catalog: Catalog | None = None) -> int | None:
        """What an instance of ``profile`` offers a request on this GPU, in MiB."""
        for geometry in self.for_gpu(product_name, model, catalog):
            for item in geometry.items:
                if item.profile == profile:
                    return item.memory_mib
        return _catalog_memory(model, profile)


def _catalog_memory(model: GpuModel | None, profile: str) -> int | None:
    if model is None:
        return None
    try:
        gi = model.gi_profile(MigProfile.parse(profile).gi_name)
    except ProfileNameError:
        return None
    return gi.memory_mib if gi is not None else None


def _names_gpu(name: str, product_name: str, model: GpuModel | None, catalog: Catalog | None) -> bool:
    if name and name in product_name:
        return True  # HAMi's rule: a substring of the NVML device name
    if model is None:
        return False
    found = (catalog or load_catalog()).find(name)
    return found is not None and found.name == model.name


# ----------------------------------------------------------------- the file


def default_path(config_file: Path) -> Path:
    """The geometries file next to config.yaml (``/etc/nvidia-mig-manager/device-config.yaml``)."""
    return config_file.with_name(DEVICE_CONFIG_NAME)


def load_geometries(path: str | Path | None, catalog: Catalog | None = None) -> AllowedGeometries:
    """Parse and check a geometries file; ``None`` or a missing default: the catalog's."""
    if path is None:
        return AllowedGeometries("catalog")
    return parse_geometries(load_yaml_file(path), str(path), catalog or load_catalog())


def load_trusted_geometries(path: str, catalog: Catalog | None = None) -> AllowedGeometries:
    """``load_geometries`` for a file that decides layouts as root: parsed from
    the one descriptor the trust walk checked, so no link flips in between."""
    text = read_trusted(path, "geometries file")
    return parse_geometries(load_yaml_text(text, path), path, catalog or load_catalog())


def parse_geometries(root: YNode, source: str, catalog: Catalog) -> AllowedGeometries:
    top = require_map(root)
    nvidia = top.get("nvidia")
    if nvidia is None:
        raise SpecError("missing key 'nvidia' (HAMi device-config format)", root.loc)
    section = require_map(nvidia, field="nvidia")
    known = section.get("knownMigGeometries")
    if known is None:
        raise SpecError("missing key 'knownMigGeometries'", nvidia.loc, field="nvidia")
    entries = []
    for e_node in require_seq(known, field="nvidia.knownMigGeometries"):
        entries.append(_entry(e_node, catalog))
    return AllowedGeometries(source, tuple(entries))


def _entry(node: YNode, catalog: Catalog) -> ModelGeometries:
    field = "knownMigGeometries[]"
    keys = check_keys(node, ("models", "allowedGeometries"), ("models", "allowedGeometries"), field=field)
    names = tuple(require_str(n, field=f"{field}.models") for n in require_seq(keys["models"], field=f"{field}.models"))
    if not names:
        raise SpecError("'models' is empty", keys["models"].loc, field=f"{field}.models")
    models = _resolve_models(names, catalog)
    geometries = []
    for g_node in require_seq(keys["allowedGeometries"], field=f"{field}.allowedGeometries"):
        geometries.append(_geometry(g_node, models))
    return ModelGeometries(names, tuple(geometries), node.loc)


def _resolve_models(names: Sequence[str], catalog: Catalog) -> list[GpuModel]:
    """Every catalog model one of ``names`` denotes (by name, alias or product-name substring)."""
    found: dict[str, GpuModel] = {}
    for name in names:
        m = catalog.find(name)
        if m is not None:
            found.setdefault(m.name, m)
        for model in catalog.models:
            if any(name in p for p in model.product_names):
                found.setdefault(model.name, model)
    return list(found.values())


def _geometry(node: YNode, models: Sequence[GpuModel]) -> Geometry:
    field = "allowedGeometries[]"
    items: list[GeometryItem] = []
    for i_node in require_seq(node, field=field):
        keys = check_keys(i_node, ("name", "memory", "count", "core"), ("name", "memory", "count"), field=field)
        name = require_str(keys["name"], field=f"{field}.name")
        try:
            profile = str(MigProfile.parse(name))
        except ProfileNameError as exc:
            raise SpecError(str(exc), keys["name"].loc, field=f"{field}.name") from None
        memory = require_int(keys["memory"], minimum=1, field=f"{field}.memory")
        count = require_int(keys["count"], minimum=1, field=f"{field}.count")
        items.append(GeometryItem(profile, memory, count))
    if not items:
        raise SpecError("a geometry needs at least one profile", node.loc, field=field)
    geometry = Geometry(tuple(items), f"{node.loc.file}:{node.loc.line}")
    for model in models:
        result = plan_gpu(model, (), geometry.target)
        if isinstance(result, Infeasible):
            raise SpecError(
                f"{geometry.describe()} is not a layout of {model.name}: {result.reason}",
                node.loc, context=f"model {model.name}",
            )
    return geometry


# ----------------------------------------------------------------- from the catalog


def _plain_profiles(model: GpuModel) -> list[str]:
    out = []
    for gi in model.gi_profiles:
        if gi.attributes or gi.full_ci is None:
            continue
        out.append(gi.full_ci.name)
    return out


@cache
def catalog_geometries(model: GpuModel) -> tuple[Geometry, ...]:
    """Every maximal layout of ``model``'s plain profiles, in the documented order."""
    profiles = _plain_profiles(model)
    sizes = {p: model.gi_profile(MigProfile.parse(p).gi_name).memory_slices for p in profiles}  # type: ignore[union-attr]
    memory = {p: _catalog_memory(model, p) or 0 for p in profiles}
    maximal = [
        t for t in legal_multisets(model, tuple(profiles))
        if not any(fits(model, _add(t, p)) for p in profiles)
    ]

    def order(t: tuple[tuple[str, int], ...]) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
        flat = sorted(s for p, n in t for s in [sizes[p]] * n)
        return (-sum(n for _, n in t), tuple(flat), tuple(p for p, _ in t))

    maximal.sort(key=order)
    out = []
    for t in maximal:
        items = sorted(t, key=lambda pn: (sizes[pn[0]], pn[0]))
        out.append(Geometry(tuple(GeometryItem(p, memory[p], n) for p, n in reversed(items))))
    return tuple(out)


def _add(target: tuple[tuple[str, int], ...], profile: str) -> tuple[tuple[str, int], ...]:
    counts = dict(target)
    counts[profile] = counts.get(profile, 0) + 1
    return tuple(counts.items())


def _target(items: tuple[tuple[str, int], ...]) -> tuple[tuple[MigProfile, int], ...]:
    return tuple((MigProfile.parse(p), n) for p, n in items)
