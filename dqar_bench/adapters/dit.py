"""Adapter for diffusers' `DiTTransformer2DModel` (and anything with the same block layout)."""

from __future__ import annotations

import torch

from dqar_bench.adapters.base import Adapter


class DiTAdapter(Adapter):
    """Blocks are `model.transformer_blocks`; self-attention is each block's `attn1`."""

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        blocks = getattr(model, "transformer_blocks", None)
        return blocks is not None and all(hasattr(b, "attn1") for b in blocks)

    def attention_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in model.transformer_blocks]
