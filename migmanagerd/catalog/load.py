"""Load and check the MIG geometry catalog (``models.yaml``, package data).

The data file is shipped with the package, so an inconsistency in it is a
bug of this project, not of the operator: ``load_catalog`` raises
``CatalogError`` naming the model and profile, and every command that needs
the catalog refuses to run rather than plan against wrong geometry.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from migmanagerd.catalog.model import NVIDIA_VENDOR_ID, CiProfile, GiProfile, GpuModel
from migmanagerd.errors import MigManagerError
from migmanagerd.spec.profile import MigProfile, ProfileNameError

DATA_FILE = "models.yaml"


class CatalogError(MigManagerError):
    """The shipped catalog is inconsistent (a packaging bug)."""


@dataclass(frozen=True)
class Catalog:
    """All known GPU models, with lookups by name and by PCI identity."""

    models: tuple[GpuModel, ...]
    _by_key: dict[str, GpuModel] = field(default_factory=dict, repr=False, compare=False)
    _by_device: dict[int, tuple[GpuModel, ...]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key: dict[str, GpuModel] = {}
        by_device: dict[int, list[GpuModel]] = {}
        for m in self.models:
            for key in _name_keys(m):
                by_key.setdefault(key, m)  # first model wins: catalog order is priority
            for d in m.device_ids:
                by_device.setdefault(d, []).append(m)
        object.__setattr__(self, "_by_key", by_key)
        object.__setattr__(self, "_by_device", {d: tuple(ms) for d, ms in by_device.items()})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def get(self, name: str) -> GpuModel | None:
        """Exact catalog name (as the simulator's node spec writes it)."""
        for m in self.models:
            if m.name == name:
                return m
        return None

    def find(self, text: str) -> GpuModel | None:
        """A model by catalog name, alias, NVML product name (with or without
        "NVIDIA "), or PCI id ("0x20B0", "0x20B010DE", "10de:20b0"); case-insensitive."""
        key = _norm(text)
        if not key:
            return None
        if key in self._by_key:
            return self._by_key[key]
        device = _parse_pci_id(key)
        if device is not None and device in self._by_device:
            return self._by_device[device][0]
        return None

    def for_device(
        self, pci_device_id: int, product_name: str, memory_mib: int | None = None
    ) -> GpuModel | None:
        """The model of a GPU as NVML describes it.

        ``pci_device_id`` is the 32-bit ``0xDDDDVVVV`` value (a bare 16-bit
        device id is accepted too). When several models share the device id,
        the product name decides, then the closest total memory, then catalog
        order. A GPU whose id is not in the catalog is matched by its exact
        product name, so a renamed board of a known model still works.
        """
        device = _device_of(pci_device_id)
        candidates = self._by_device.get(device, ()) if device is not None else ()
        name_key = _norm(product_name or "")
        if not candidates:
            by_name = [m for m in self.models if name_key and name_key in _product_keys(m)]
            return by_name[0] if by_name else None
        if len(candidates) == 1:
            return candidates[0]
        named = [m for m in candidates if name_key and name_key in _product_keys(m)]
        pool = named or list(candidates)
        if memory_mib is not None and len(pool) > 1:
            pool.sort(key=lambda m: abs(m.memory_mib - memory_mib))  # stable: ties keep order
        return pool[0]


def _norm(text: str) -> str:
    return " ".join(str(text).strip().lower().split())


def _strip_vendor(key: str) -> str:
    return key[len("nvidia ") :] if key.startswith("nvidia ") else key


def _product_keys(m: GpuModel) -> set[str]:
    keys = set()
    for p in m.product_names:
        k = _norm(p)
        keys.add(k)
        keys.add(_strip_vendor(k))
    return keys


def _name_keys(m: GpuModel) -> Iterable[str]:
    yield _norm(m.name)
    for a in m.aliases:
        yield _norm(a)
    yield from sorted(_product_keys(m))


def _device_of(pci_device_id: int) -> int | None:
    if pci_device_id is None or pci_device_id < 0:
        return None
    if pci_device_id <= 0xFFFF:
        return pci_device_id
    if pci_device_id & 0xFFFF != NVIDIA_VENDOR_ID:
        return None
    return (pci_device_id >> 16) & 0xFFFF


def _parse_pci_id(key: str) -> int | None:
    """'0x20b0', '0x20b010de', '20b010de' or lspci's '10de:20b0' -> 0x20B0."""
    if key.startswith("10de:"):
        key = key[5:]
    elif key.startswith("0x"):
        key = key[2:]
    if len(key) not in (4, 8):
        return None
    try:
        value = int(key, 16)
    except ValueError:
        return None
    if len(key) == 4:
        return value
    return _device_of(value)


# ----------------------------------------------------------------- loading


@functools.lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The shipped catalog, parsed and checked once per process."""
    text = resources.files("migmanagerd.catalog").joinpath(DATA_FILE).read_text(encoding="utf-8")
    # package data, not an operator's file: libyaml's loader (about ten times
    # faster than the pure-Python one) is safe to use whole here
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return parse_catalog(yaml.load(text, Loader=loader))  # noqa: S506 - a safe loader


def parse_catalog(data: Any) -> Catalog:
    """Build and check a catalog from the decoded data file (see models.yaml)."""
    root = _map(data, "catalog")
    if root.get("version") != 1:
        raise CatalogError(f"catalog: unsupported version {root.get('version')!r} (expected 1)")
    ci_ids = {int(k): int(v) for k, v in _map(root.get("ci_profile_ids"), "ci_profile_ids").items()}
    ci_rules = {int(k): _seq(v, f"ci_rules.{k}") for k, v in _map(root.get("ci_rules"), "ci_rules").items()}
    generations = _map(root.get("generations"), "generations")
    geometries = _map(root.get("geometries"), "geometries")
    models = tuple(
        _build_model(_map(m, "models[]"), geometries, generations, ci_rules, ci_ids)
        for m in _seq(root.get("models"), "models")
    )
    _check_catalog(models)
    return Catalog(models)


def _map(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise CatalogError(f"catalog: {where}: expected a mapping")
    return v


def _seq(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise CatalogError(f"catalog: {where}: expected a list")
    return v


def _build_model(
    m: Mapping[str, Any],
    geometries: Mapping[str, Any],
    generations: Mapping[str, Any],
    ci_rules: Mapping[int, list[Any]],
    ci_ids: Mapping[int, int],
) -> GpuModel:
    name = str(m.get("name") or "")
    where = f"catalog: model {name or '?'}"
    if not name:
        raise CatalogError("catalog: a model has no name")
    geo_name = m.get("geometry")
    if not isinstance(geo_name, str) or geo_name not in geometries:
        raise CatalogError(f"{where}: unknown geometry {geo_name!r}")
    geo = _map(geometries[geo_name], f"geometries.{geo_name}")
    shapes = _map(geo.get("shapes"), f"geometries.{geo_name}.shapes")
    gen = m.get("generation")
    if not isinstance(gen, str) or gen not in generations:
        raise CatalogError(f"{where}: unknown generation {gen!r}")
    gen_flags = _map(generations[gen], f"generations.{gen}")
    compute_total = int(geo["compute_slices"])
    memory_total = int(geo["memory_slices"])
    profiles, exclusive = _build_profiles(
        _seq(m.get("profiles"), f"{where}: profiles"), shapes, where, geo_name,
        ci_rules, ci_ids, bool(m.get("confirmed", True)),
    )

    return GpuModel(
        name=name,
        product_names=tuple(str(p) for p in m.get("product_names") or ()),
        device_ids=tuple(int(d) for d in m.get("device_ids") or ()),
        compute_slices=compute_total,
        memory_slices=memory_total,
        memory_mib=int(m["memory_mib"]),
        gi_profiles=tuple(profiles),
        aliases=tuple(str(a) for a in m.get("aliases") or ()),
        sources=tuple(str(s) for s in m.get("sources") or ()),
        notes=" ".join(str(m.get("notes") or "").split()),
        exclusive_groups=tuple(exclusive),
        mig_mode_persistent=bool(gen_flags["mig_mode_persistent"]),
        mig_mode_needs_reset=bool(gen_flags["mig_mode_needs_reset"]),
    )


def _build_profiles(
    rows: list[Any],
    shapes: Mapping[str, Any],
    where: str,
    geo_name: str,
    ci_rules: Mapping[int, list[Any]],
    ci_ids: Mapping[int, int],
    model_confirmed: bool,
) -> tuple[list[GiProfile], list[tuple[str, ...]]]:
    """A model's GI profiles, and the pairs of them that cannot coexist."""
    names = [str(r.get("name")) for r in rows]
    profiles: list[GiProfile] = []
    exclusive: list[tuple[str, ...]] = []
    for raw in rows:
        row = _map(raw, f"{where}: profile")
        pname = str(row.get("name"))
        shape_name = row.get("shape")
        if not isinstance(shape_name, str) or shape_name not in shapes:
            raise CatalogError(f"{where}: profile {pname}: unknown shape {shape_name!r} in {geo_name}")
        spec = {**shapes[shape_name], **{k: v for k, v in row.items() if k not in ("name", "shape")}}
        profiles.append(_build_gi(pname, spec, where, ci_rules, ci_ids, model_confirmed))
        for other in names:
            # a profile with `only_with` coexists only with those (nvml.h: *_ALL_ME GIs)
            if "only_with" in row and other != pname and other not in row["only_with"]:
                pair = tuple(sorted((pname, other)))
                if pair not in exclusive:
                    exclusive.append(pair)
        for other in row.get("only_with", ()):
            if other not in names:
                raise CatalogError(f"{where}: profile {pname}: only_with names unknown profile {other}")
    return profiles, exclusive


def _build_gi(
    name: str,
    spec: Mapping[str, Any],
    where: str,
    ci_rules: Mapping[int, list[Any]],
    ci_ids: Mapping[int, int],
    model_confirmed: bool,
) -> GiProfile:
    try:
        parsed = MigProfile.parse(name)
    except ProfileNameError as exc:
        raise CatalogError(f"{where}: {exc}") from None
    if str(parsed) != name or not parsed.is_full_gi:
        raise CatalogError(f"{where}: profile {name!r} is not a canonical GPU-instance name")
    compute = int(spec["compute"])
    if parsed.gpu_slices != compute:
        raise CatalogError(f"{where}: profile {name}: name says {parsed.gpu_slices}g, shape has {compute} compute slices")
    attrs = tuple(spec.get("attributes") or ())
    if parsed.attribute_suffix != "".join(attrs):
        raise CatalogError(f"{where}: profile {name}: attributes {attrs} do not match the name")
    rules = ci_rules.get(compute)
    if rules is None:
        raise CatalogError(f"{where}: profile {name}: no ci_rules for {compute} compute slices")
    cis = []
    for rule in rules:
        c = int(rule["compute"])
        ci_name = str(MigProfile(parsed.gpu_slices, parsed.memory_gb, c, parsed.sign, parsed.attributes))
        cis.append(
            CiProfile(
                name=ci_name,
                nvml_id=ci_ids[c],
                compute_slices=c,
                max_count=int(rule["max"]),
                placements=tuple(int(s) for s in rule["starts"]),
            )
        )
    return GiProfile(
        name=name,
        nvml_id=int(spec["id"]),
        selector=int(spec["selector"]),
        compute_slices=compute,
        memory_slices=int(spec["memory"]),
        memory_mib=int(spec["memory_mib"]),
        max_count=int(spec["max"]),
        placements=tuple(int(s) for s in spec["starts"]),
        attributes=attrs,
        sm_count=int(spec["sm"]) if spec.get("sm") is not None else None,
        ci_profiles=tuple(cis),
        confirmed=bool(spec.get("confirmed", model_confirmed)),
        notes=str(spec.get("notes") or ""),
        former_names=_former_names(spec, name, where),
    )


def _former_names(spec: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    out = []
    for raw in spec.get("formerly") or ():
        text = str(raw)
        try:
            parsed = MigProfile.parse(text)
        except ProfileNameError as exc:
            raise CatalogError(f"{where}: profile {name}: formerly: {exc}") from None
        if str(parsed) != text or not parsed.is_full_gi or parsed.gpu_slices != MigProfile.parse(name).gpu_slices:
            raise CatalogError(f"{where}: profile {name}: formerly {text!r} is not a GPU-instance name of the same slices")
        out.append(text)
    return tuple(out)


def _check_catalog(models: tuple[GpuModel, ...]) -> None:
    seen_names: dict[str, str] = {}
    for m in models:
        for key in _name_keys(m):
            owner = seen_names.setdefault(key, m.name)
            if owner != m.name:
                raise CatalogError(f"catalog: name {key!r} is used by both {owner} and {m.name}")
        check_model(m)


def check_model(m: GpuModel) -> None:
    """Every internal consistency rule of one model; raises ``CatalogError``."""
    where = f"catalog: model {m.name}"
    _check_model_ids(m, where)
    for p in m.gi_profiles:
        _check_gi_profile(m, p, f"{where}: profile {p.name}")
    for group in m.exclusive_groups:
        for n in group:
            if m.gi_profile(n) is None:
                raise CatalogError(f"{where}: exclusive group names unknown profile {n}")


def _check_model_ids(m: GpuModel, where: str) -> None:
    if not m.gi_profiles:
        raise CatalogError(f"{where}: no profiles")
    if len(set(m.device_ids)) != len(m.device_ids):
        raise CatalogError(f"{where}: repeated device id")
    for d in m.device_ids:
        if not 0 < d <= 0xFFFF:
            raise CatalogError(f"{where}: device id {d:#x} is not a 16-bit PCI device id")
    for attr in ("name", "nvml_id"):
        values = [getattr(p, attr) for p in m.gi_profiles]
        if len(set(values)) != len(values):
            raise CatalogError(f"{where}: GI profile {attr}s are not unique: {values}")
    every_name = [p.name for p in m.gi_profiles] + [f for p in m.gi_profiles for f in p.former_names]
    if len(set(every_name)) != len(every_name):
        raise CatalogError(f"{where}: a former profile name is also another profile's name")
    selectors = [p.selector for p in m.gi_profiles]
    if len(set(selectors)) != len(selectors):
        raise CatalogError(f"{where}: two GI profiles share an NVML selector")


def _check_gi_profile(m: GpuModel, p: GiProfile, pw: str) -> None:
    if not 1 <= p.compute_slices <= m.compute_slices:
        raise CatalogError(f"{pw}: {p.compute_slices} compute slices, the GPU has {m.compute_slices}")
    if not 1 <= p.memory_slices <= m.memory_slices:
        raise CatalogError(f"{pw}: {p.memory_slices} memory slices, the GPU has {m.memory_slices}")
    _check_starts(m, p, pw)
    if p.max_count < 1:
        raise CatalogError(f"{pw}: max count must be at least 1")
    if _max_disjoint(p) < p.max_count or p.max_count * p.compute_slices > m.compute_slices:
        raise CatalogError(f"{pw}: max count {p.max_count} cannot be reached with its starts and slices")
    if p.memory_mib <= 0 or p.memory_mib > m.memory_mib:
        raise CatalogError(f"{pw}: memory {p.memory_mib} MiB outside 1..{m.memory_mib}")
    if p.full_ci is None:
        raise CatalogError(f"{pw}: no compute-instance profile spans the whole GI")
    for ci in p.ci_profiles:
        _check_ci_profile(p, ci, f"{pw}: CI {ci.name}")


def _check_starts(m: GpuModel, p: GiProfile, pw: str) -> None:
    if not p.placements or list(p.placements) != sorted(set(p.placements)):
        raise CatalogError(f"{pw}: starts must be a non-empty ascending list without repeats")
    for s in p.placements:
        if s < 0 or s + p.memory_slices > m.memory_slices:
            raise CatalogError(f"{pw}: start {s} + {p.memory_slices} slices exceeds {m.memory_slices} memory slices")


def _check_ci_profile(p: GiProfile, ci: CiProfile, cw: str) -> None:
    if not 1 <= ci.compute_slices <= p.compute_slices:
        raise CatalogError(f"{cw}: larger than its GI")
    for s in ci.placements:
        if s < 0 or s + ci.compute_slices > p.compute_slices:
            raise CatalogError(f"{cw}: start {s} runs past the GI's {p.compute_slices} compute slices")
    if ci.max_count < 1 or ci.max_count * ci.compute_slices > p.compute_slices:
        raise CatalogError(f"{cw}: max count {ci.max_count} does not fit the GI")


def _max_disjoint(p: GiProfile) -> int:
    """How many non-overlapping placements of ``p`` fit (greedy is optimal for equal sizes)."""
    count, end = 0, -1
    for s in p.placements:
        if s >= end:
            count, end = count + 1, s + p.memory_slices
    return count
