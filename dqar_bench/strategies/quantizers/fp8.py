"""Quantizer `fp8`: float8 e4m3 codes with one float32 scale per tensor.

The scale maps max|x| (over the finite values; a NaN or inf is kept as e4m3's NaN) onto
e4m3's largest finite value (448), so the codes use the
format's whole range; e4m3 keeps 3 mantissa bits, so the round trip is within 1/16 of
each value (relative), unlike int8's uniform step. Needs a torch with
`torch.float8_e4m3fn` (2.1 or later); without it the suite is refused at validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dqar_bench import hookimpl
from dqar_bench.strategies.quantizers.scaled import Scaled, ScaledQuantizer, finite_amax, scales_for

FP8 = getattr(torch, "float8_e4m3fn", None)


@dataclass
class Fp8(ScaledQuantizer):
    """float8 e4m3 codes with a per-tensor float32 scale (torch >= 2.1)."""

    PLUGIN_NAME = "fp8"

    def __post_init__(self) -> None:
        if FP8 is None:
            raise ValueError(f"fp8 needs torch.float8_e4m3fn, which torch {torch.__version__} lacks; use int8 or upgrade torch")

    def pack(self, x: torch.Tensor) -> Scaled:
        x = x.detach()
        top = torch.finfo(FP8).max
        amax, finite = finite_amax(x, tuple(range(x.ndim)))
        scales = scales_for(amax, top)
        # e4m3fn has no infinity and not every backend saturates a cast past 448: clamp first;
        # a NaN or inf becomes e4m3's NaN code
        codes = (x.to(torch.float32) / scales).clamp_(-top, top).masked_fill_(~finite, float("nan")).to(FP8)
        count = (~finite).sum()
        self._nonfinite.add(count)
        return Scaled(codes, scales, x.dtype, x.shape, count)


@hookimpl
def register_quantizers():
    return [Fp8]
