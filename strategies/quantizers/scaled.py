"""What the scaled quantizers (`int8`, `fp8`) share: codes plus scales, and safe scales.

A quantized tensor is held as low-precision codes and float32 scales that broadcast
against them; `nbytes` counts both, because both are really held. Scales are floored at
the smallest normal float32, so an all-zero group gives codes 0 / tiny = 0 and comes
back as zeros, never 0 / 0 = NaN.
"""

from __future__ import annotations

import torch


class Scaled:
    """Codes and their scales; `unpack` gives `codes * scales` back in the original dtype."""

    __slots__ = ("codes", "scales", "dtype", "shape")

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, shape: torch.Size) -> None:
        self.codes, self.scales, self.dtype, self.shape = codes, scales, dtype, shape

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()

    def unpack(self) -> torch.Tensor:
        return (self.codes.to(torch.float32) * self.scales).to(self.dtype).reshape(self.shape)


def scales_for(amax: torch.Tensor, code_max: float) -> torch.Tensor:
    """`amax / code_max` in float32, never below the smallest normal float (no 0 / 0 later)."""
    return (amax.to(torch.float32) / code_max).clamp_min_(torch.finfo(torch.float32).tiny)
