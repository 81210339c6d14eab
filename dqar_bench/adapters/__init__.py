"""The model adapter: it puts a strategy on a model's blocks and takes it off again.

There is one adapter, driven by the model's family entry (`dqar_bench.families`): the
entry says where the blocks are and what their attention and feed-forward modules are
called. `install` returns an `Installation` that restores the model exactly (its modules'
`forward` attributes are deleted again, so nothing of the harness is left on the model).
"""

from __future__ import annotations

import torch

from dqar_bench.adapters.base import Adapter, Installation
from dqar_bench.families import family_of


def adapter_for(model: torch.nn.Module) -> Adapter:
    """The adapter for a transformer, from its family entry (a one-line error if it has none)."""
    return Adapter(family_of(model))


__all__ = ["Adapter", "Installation", "adapter_for"]
