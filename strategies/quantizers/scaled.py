"""What the scaled quantizers (`int8`, `fp8`) share: codes plus scales, and safe scales.

A quantized tensor is held as low-precision codes and float32 scales that broadcast
against them; `nbytes` counts both, because both are really held. Scales of all-zero
groups are set to 1 so that a zero (or empty) group dequantizes to zero, never NaN.
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
    """`amax / code_max` in float32, with 1 where a group is all zero (no 0/0 later)."""
    scales = amax.to(torch.float32) / code_max
    return torch.where(scales > 0, scales, torch.ones_like(scales))
