"""The hooks a dqar-bench plugin may implement: one per kind of strategy part.

Each hook returns a list of part classes (subclasses of `Gate`, `Quantizer`, `Cache`
or `Scheduler`). A class carries its own registry name (`PLUGIN_NAME`), its description
(the first line of its docstring) and its parameters (its dataclass fields, with defaults),
so the registry can list, validate and build it without running it.
"""

from __future__ import annotations

import pluggy

PROJECT = "dqar_bench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_gates() -> list[type]:
    """Gates decide, per step and block, whether an eligible block reuses its cache."""


@hookspec
def register_quantizers() -> list[type]:
    """Quantizers decide how a cached tensor is stored."""


@hookspec
def register_caches() -> list[type]:
    """Caches decide what a block stores when it computes and gives back when it reuses."""


@hookspec
def register_schedulers() -> list[type]:
    """Schedulers give the static steps x blocks mask of where reuse may happen at all."""
