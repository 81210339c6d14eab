"""Model adapters: they put a strategy on a model's blocks and take it off again.

An adapter is chosen by the transformer's class. `install` returns an `Installation`
that restores the model exactly (its modules' `forward` attributes are deleted again, so
nothing of the harness is left on the model).
"""

from __future__ import annotations

import torch

from dqar_bench.adapters.dit import DiTAdapter
from dqar_bench.adapters.base import Adapter, Installation
from dqar_bench.adapters.pixart import PixArtAdapter

# The most specific first: PixArt's blocks would also pass DiT's layout check.
ADAPTERS: tuple[type[Adapter], ...] = (PixArtAdapter, DiTAdapter)


def adapter_for(model: torch.nn.Module) -> Adapter:
    for cls in ADAPTERS:
        if cls.supports(model):
            return cls()
    names = ", ".join(c.__name__ for c in ADAPTERS)
    raise NotImplementedError(f"no adapter for {type(model).__name__} (adapters: {names})")


def adapter_for_family(family: str | None) -> type[Adapter] | None:
    """The adapter class of a model family ("dit", "pixart"), for checks before a model exists."""
    return next((cls for cls in ADAPTERS if cls.FAMILY == family), None)


__all__ = ["Adapter", "DiTAdapter", "Installation", "PixArtAdapter", "adapter_for", "adapter_for_family"]
