"""Model adapters: they put a strategy on a model's blocks and take it off again.

An adapter is chosen by the transformer's class. `install` returns an `Installation`
that restores the model exactly (its modules' `forward` attributes are deleted again, so
nothing of the harness is left on the model).
"""

from __future__ import annotations

import torch

from dqar_bench.adapters.dit import DiTAdapter
from dqar_bench.adapters.base import Adapter, Installation

ADAPTERS: tuple[type[Adapter], ...] = (DiTAdapter,)


def adapter_for(model: torch.nn.Module) -> Adapter:
    for cls in ADAPTERS:
        if cls.supports(model):
            return cls()
    names = ", ".join(c.__name__ for c in ADAPTERS)
    raise NotImplementedError(f"no adapter for {type(model).__name__} (adapters: {names})")


__all__ = ["Adapter", "Installation", "adapter_for"]
