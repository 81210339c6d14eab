"""Adapter for diffusers' `DiTTransformer2DModel` (and anything with the same block layout)."""

from __future__ import annotations

import torch

from dqar_bench.adapters.base import Adapter


class DiTAdapter(Adapter):
    """Blocks are `model.transformer_blocks`; self-attention `attn1`, feed-forward `ff`."""

    FAMILY = "dit"

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        blocks = getattr(model, "transformer_blocks", None)
        return blocks is not None and all(hasattr(b, "attn1") for b in blocks)
