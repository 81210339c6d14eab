"""Cache `attention-output`: keep each block's self-attention output, give it back on reuse.

This is what PAB broadcasts and what the DQAR seed moved to after int8 K/V reuse hurt
quality: a reuse step skips Q/K/V projections, attention and the output projection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dqar_bench import Cache, hookimpl
from dqar_bench.parts import Packed


@dataclass
class AttentionOutput(Cache):
    """Cache the self-attention output of each block (after its output projection)."""

    PLUGIN_NAME = "attention-output"

    _held: dict[int, Packed] = field(default_factory=dict, init=False, repr=False)

    def clear(self) -> None:
        self._held.clear()

    def holds(self, block: int) -> bool:
        return block in self._held

    def store(self, block: int, out: torch.Tensor, qkv: tuple[torch.Tensor, ...] | None) -> None:
        self._held[block] = self.quantizer.pack(out)

    def reuse(self, block: int, attn: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._held[block].unpack().to(hidden_states.dtype)

    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._held.values())


@hookimpl
def register_caches():
    return [AttentionOutput]
