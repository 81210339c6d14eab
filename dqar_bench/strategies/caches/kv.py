"""Cache `kv`: keep each block's keys and values; a reuse step computes the queries only.

The DQAR seed's first design: on a reuse step the block projects Q from the current
hidden states and attends to the K and V cached (dequantized) when it last computed,
so queries stay fresh while the K/V projections are skipped. It saves less than the
`attention-output` cache (attention and the output projection still run); the seed
reports that int8 K/V reuse hurt quality, which this cache lets a suite measure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dqar_bench import Cache, hookimpl
from dqar_bench.strategy.attention import attend, project_q
from dqar_bench.core.parts import Packed


@dataclass
class KeyValue(Cache):
    """Cache each block's K and V; on reuse compute Q only and attend to the cached K, V."""

    PLUGIN_NAME = "kv"
    NEEDS_QKV = True

    _held: dict[int, tuple[Packed, Packed]] = field(default_factory=dict, init=False, repr=False)

    def clear(self) -> None:
        self._held.clear()

    def holds(self, block: int) -> bool:
        return block in self._held

    def store(self, block: int, out: torch.Tensor, qkv: tuple[torch.Tensor, ...] | None) -> None:
        if qkv is None:
            raise RuntimeError("the kv cache needs Q, K, V from the harness's attention path (NEEDS_QKV)")
        _, k, v = qkv
        self._held[block] = (self.quantizer.pack(k), self.quantizer.pack(v))

    def reuse(self, block: int, attn: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        q = project_q(attn, hidden_states)
        k, v = (p.unpack().to(q.dtype) for p in self._held[block])
        return attend(attn, q, k, v, hidden_states)

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self._held.values())


@hookimpl
def register_caches():
    return [KeyValue]
