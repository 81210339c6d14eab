"""Cache `attention-output`: keep each block's self-attention output, give it back on reuse.

This is what PAB broadcasts and what the DQAR seed moved to after int8 K/V reuse hurt
quality: a reuse step skips Q/K/V projections, attention and the output projection.
Graph-safe (`SlotCache`), so it runs under CUDA graphs too.
"""

from __future__ import annotations

from dataclasses import dataclass

from dqar_bench import hookimpl
from dqar_bench.strategy.storage import SlotCache


@dataclass
class AttentionOutput(SlotCache):
    """Cache the self-attention output of each block (after its output projection)."""

    PLUGIN_NAME = "attention-output"
    TARGET = "attention"


@hookimpl
def register_caches():
    return [AttentionOutput]
