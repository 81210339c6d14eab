"""Quantizer `int8`: symmetric 8-bit codes, one scale per tensor, per channel or per head.

q = clip(round(x / s), -127, 127), s = max|x| / 127 over the finite values of each group,
so the round trip is off by at most half a step (s / 2); a NaN or inf is kept as the code
-128 and comes back as NaN, without touching the rest of its group. The groups:

- `per_tensor`: the whole tensor (one float32 scale; the DQAR seed's default);
- `per_channel`: each channel of the last dimension (C scales for [B, N, C], D for K/V);
- `per_head`: each attention head. K and V arrive as [batch, heads, tokens, head_dim] and
  carry their heads in dimension 1. An attention output [batch, tokens, channels] does
  not say how its channels split into heads, so `heads` gives the count (the model's
  attention heads; 16 for DiT-XL/2) and the channels are cut into that many equal slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from dqar_bench import hookimpl
from dqar_bench.strategies.quantizers.scaled import Scaled, ScaledQuantizer

CODE_MAX = 127.0
NAN_CODE = -128
"""Where a NaN or inf was: the one int8 code the symmetric range leaves unused."""
TINY = torch.finfo(torch.float32).tiny


@dataclass
class Int8(ScaledQuantizer):
    """Symmetric int8 with float32 scales per tensor, per last-dim channel or per attention head."""

    PLUGIN_NAME = "int8"

    mode: Literal["per_tensor", "per_channel", "per_head"] = field(
        default="per_tensor", metadata={"help": "which elements share one scale"}
    )
    heads: int | None = field(
        default=None, metadata={"help": "per_head on [batch, tokens, channels] tensors: the channels split into this many heads"}
    )

    def __post_init__(self) -> None:
        if self.heads is not None and self.heads < 1:
            raise ValueError(f"parameter 'heads' must be >= 1, got {self.heads}")

    def pack(self, x: torch.Tensor) -> Scaled:
        """About half the kernels of the textbook form (finite mask, masked max, clamp, mask
        fill, count of the mask), with the same codes bit for bit (tested against it):

        - the finite max is the max of `nan_to_num(x, 0, 0, 0)`: NaN and inf count as 0,
          as the finite mask made them;
        - no clamp: every finite |x| <= amax and scale = fl(amax / 127), so |x| / scale
          rounds to at most 127 (and where the scale is floored at the smallest normal
          float, |x| / scale < 127 already);
        - a NaN or inf divides to NaN or inf, which `nan_to_num_` turns into the code -128
          in place; no finite value reaches -128, so counting that code counts them.
        """
        x = x.detach()
        if self.mode == "per_tensor" and x.ndim:  # the common case, without the grouping's call
            view, dims = x, tuple(range(x.ndim))
        else:
            view, keep = self._groups(x)
            dims = tuple(d for d in range(view.ndim) if d not in keep)
        magnitude = torch.nan_to_num(view, 0.0, 0.0, 0.0).abs_()
        amax = magnitude.amax(dim=dims, keepdim=True) if dims else magnitude
        scales = (amax.to(torch.float32) / CODE_MAX).clamp_min_(TINY)  # `scales_for`, inline
        codes = torch.div(view, scales).round_().nan_to_num_(NAN_CODE, NAN_CODE, NAN_CODE).to(torch.int8)
        count = (codes == NAN_CODE).sum()
        total = self._nonfinite.total
        if total is not None:
            total.add_(count)
        return Scaled(codes, scales, x.dtype, x.shape, count, NAN_CODE)

    def _groups(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """`x` (reshaped if need be) and the dimensions along which each group has its own scale."""
        if self.mode == "per_tensor" or x.ndim == 0:
            return x, ()
        if self.mode == "per_channel":
            return x, (x.ndim - 1,)
        if x.ndim == 4:  # K / V: [batch, heads, tokens, head_dim]
            return x, (1,)
        if x.ndim == 3 and self.heads is not None:  # [batch, tokens, heads * head_dim]
            if x.shape[-1] % self.heads:
                raise ValueError(f"int8 per_head: {x.shape[-1]} channels do not split into heads={self.heads}")
            return x.reshape(*x.shape[:-1], self.heads, x.shape[-1] // self.heads), (2,)
        raise ValueError(
            f"int8 per_head needs K/V as [batch, heads, tokens, head_dim] or, for a tensor of shape "
            f"{tuple(x.shape)}, the quantizer's 'heads' parameter (the model's attention heads)"
        )


@hookimpl
def register_quantizers():
    return [Int8]
