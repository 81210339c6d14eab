"""A part named in a case, and the one place a part is looked up and built from it.

Validation binds every spec (`bind`): it finds the class in the registry and builds the
part with the suite's parameters, so whatever the part refuses is refused before anything
runs. Everything after validation reads that one built object: the identity its
parameters and origin, `plan` its static pattern, and the run and the trace a copy of it
(`new_part`), since a part keeps state across the calls of a case and the cases of one
sweep or execution mode share their specs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from dqar_bench.core.parts import Part, build_part
from dqar_bench.core.plugins import PartInfo, Registry, get_registry


@dataclass(frozen=True)
class PartSpec:
    """A part named in a case, with the parameters the suite gives it; bound by validation
    to the registered class (`info`) and the part built from it (`part`)."""

    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    info: PartInfo | None = field(default=None, compare=False, repr=False)
    part: Part | None = field(default=None, compare=False, repr=False)

    def label(self) -> str:
        if not self.params:
            return self.name
        inner = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({inner})"


def bind(spec: PartSpec, registry: Registry) -> PartSpec:
    """The spec with its class and built part: the only place a part is built from a spec.

    Raises `KeyError` for a name the registry lacks and `ValueError` (naming the
    parameter) for parameters the part refuses; the suite's reader words both."""
    if spec.part is not None:
        return spec
    info = registry.get(spec.kind, spec.name)
    return replace(spec, info=info, part=build_part(info.cls, spec.params))


def bound(spec: PartSpec, registry: Registry | None) -> PartSpec:
    """`spec` bound, binding it here only where it was made in code rather than validated."""
    if spec.part is not None:
        return spec
    return bind(spec, registry or get_registry())


def new_part(spec: PartSpec, registry: Registry | None = None) -> Part:
    """A part of its own for one run of a case: a copy of the validated one."""
    part = bound(spec, registry).part
    assert part is not None
    return copy.deepcopy(part)
