"""MIG profile names: ``[Nc.]Ng.Mgb[+attr[,attr]|-attr]``.

A name in ``mig-devices`` names one MIG device: a compute instance of ``N``
compute slices (the whole GPU instance when the ``Nc.`` prefix is absent) in
a GPU instance of ``Ng.Mgb``; how several share a GPU instance is
planner.packing's rule. Attribute rules follow the MIG user guide and NVML's
profile naming (docs/mig-geometry.md, section 2):
``+me`` (media engines), ``+me.all`` (all media engines), ``+gfx`` (graphics),
``-me`` (no media engines); ``+`` and ``-`` attributes never mix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLUS_ATTRIBUTES = ("gfx", "me", "me.all")
MINUS_ATTRIBUTES = ("me",)

_NAME = re.compile(
    r"^(?:(?P<c>\d+)c\.)?(?P<g>\d+)g\.(?P<mem>\d+)gb(?:(?P<sign>[+-])(?P<attrs>[^+-]*))?$"
)


class ProfileNameError(ValueError):
    """A malformed profile name; ``str()`` is the reason, for a person."""


def _check_plain(text: object) -> None:
    if not isinstance(text, str):
        raise ProfileNameError(f"profile name must be a string, got {type(text).__name__}")
    if text != text.strip():
        # nvidia-mig-parted rejects these too; stripping would hide a typo
        # that the peer (and a script comparing names) treats as different
        raise ProfileNameError(f"'{text}': a MIG profile name must not start or end with whitespace")


def _attributes(text: str, sign: str, listed: str) -> tuple[str, ...]:
    """The sorted attributes after ``sign`` in profile name ``text``; each known, none twice."""
    parts = listed.split(",")
    known = PLUS_ATTRIBUTES if sign == "+" else MINUS_ATTRIBUTES
    for part in parts:
        if part == "":
            raise ProfileNameError(f"'{text}': empty attribute after '{sign}'")
        if part not in known:
            allowed = ", ".join(sign + a for a in known)
            raise ProfileNameError(f"'{text}': unknown attribute '{sign}{part}' (known: {allowed})")
    if len(set(parts)) != len(parts):
        raise ProfileNameError(f"'{text}': attribute repeated")
    return tuple(sorted(parts))


@dataclass(frozen=True, order=True)
class MigProfile:
    """A parsed MIG profile name. ``str()`` is the canonical form."""

    gpu_slices: int
    memory_gb: int
    compute_slices: int
    sign: str = ""  # "", "+" or "-"
    attributes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> MigProfile:
        _check_plain(text)
        m = _NAME.match(text.lower())
        if m is None:
            raise ProfileNameError(
                f"'{text}' is not a MIG profile name; expected [<C>c.]<G>g.<M>gb[+attr|-attr], e.g. 1g.5gb, 1c.3g.20gb, 1g.10gb+me"
            )
        g = int(m["g"])
        mem = int(m["mem"])
        c = int(m["c"]) if m["c"] is not None else g
        if g < 1:
            raise ProfileNameError(f"'{text}': a GPU instance needs at least 1 slice (got {g}g)")
        if mem < 1:
            raise ProfileNameError(f"'{text}': memory size must be at least 1gb")
        if c < 1:
            raise ProfileNameError(f"'{text}': a compute instance needs at least 1 slice (got {c}c)")
        if c > g:
            raise ProfileNameError(
                f"'{text}': compute instance ({c}c) is larger than its GPU instance ({g}g)"
            )
        sign = m["sign"] or ""
        attrs = _attributes(text, sign, m["attrs"]) if sign else ()
        return cls(gpu_slices=g, memory_gb=mem, compute_slices=c, sign=sign, attributes=attrs)

    @property
    def attribute_suffix(self) -> str:
        return f"{self.sign}{','.join(self.attributes)}" if self.attributes else ""

    @property
    def gi_name(self) -> str:
        """The GPU-instance profile this device lives in, e.g. ``3g.20gb``."""
        return f"{self.gpu_slices}g.{self.memory_gb}gb{self.attribute_suffix}"

    @property
    def is_full_gi(self) -> bool:
        """True when the compute instance spans its whole GPU instance."""
        return self.compute_slices == self.gpu_slices

    @property
    def ci_name(self) -> str:
        """The compute-instance profile name as nvidia-smi prints it."""
        if self.is_full_gi:
            return self.gi_name
        return f"{self.compute_slices}c.{self.gi_name}"

    def __str__(self) -> str:
        return self.ci_name
