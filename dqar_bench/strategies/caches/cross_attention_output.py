"""Cache `cross-attention-output`: keep each block's cross-attention output, give it back on reuse.

Pyramid Attention Broadcast (Zhao et al. 2024) broadcasts three attentions, each over its
own range; cross-attention (image queries over the caption) changes least from step to
step, so it is broadcast the longest. This is that third broadcast: the adapter hooks the
modules a family names in `cross_attention` (PixArt's and Wan's `attn2`), the case's gate
and scheduler say when: `gate: {name: interval, every: 6}`, `scheduler: timestep-window`
is diffusers' `cross_attention_block_skip_range=6` with its default (100, 800)
`cross_attention_timestep_skip_range`. Families with no cross-attention module (DiT, and
the joint-attention SD3, FLUX, CogVideoX, HunyuanVideo) refuse it at validate time.
Graph-safe (`SlotCache`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dqar_bench import hookimpl
from dqar_bench.strategy.storage import SlotCache


@dataclass
class CrossAttentionOutput(SlotCache):
    """Cache the cross-attention output of each block (PAB's cross-attention broadcast)."""

    PLUGIN_NAME = "cross-attention-output"
    TARGET = "cross-attention"


@hookimpl
def register_caches():
    return [CrossAttentionOutput]
