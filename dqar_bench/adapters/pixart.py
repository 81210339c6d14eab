"""Adapter for diffusers' `PixArtTransformer2DModel` (PixArt-alpha): a text-conditioned DiT.

Its blocks are `BasicTransformerBlock`s like DiT's, with `ada_norm_single` modulation and
a cross-attention `attn2` over the caption between self-attention and feed-forward. Parts
apply to self-attention (`attn1`), the feed-forward or the whole block; the cross-attention
always computes: caching it (PAB's cross-attention broadcast) would need its own hook
target, and a cache whose target no adapter hosts is refused at `validate` time.
"""

from __future__ import annotations

import torch

from dqar_bench.adapters.base import Adapter


class PixArtAdapter(Adapter):
    """Blocks are `model.transformer_blocks`: `attn1` (self), `attn2` (cross, not hooked), `ff`."""

    FAMILY = "pixart"

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        return type(model).__name__ == "PixArtTransformer2DModel"
