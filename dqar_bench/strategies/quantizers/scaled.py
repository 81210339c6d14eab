"""What the scaled quantizers (`int8`, `fp8`) share: codes plus scales, safe scales, and
what becomes of NaN and inf.

A quantized tensor is held as low-precision codes and float32 scales that broadcast
against them; `nbytes` counts both, because both are really held. Scales are floored at
the smallest normal float32, so an all-zero group gives codes 0 / tiny = 0 and comes
back as zeros, never 0 / 0 = NaN.

A group's scale is taken over its finite values only: one NaN or inf would otherwise make
the scale NaN or inf and turn every value of the group into garbage, silently. The
non-finite values themselves stay where they were and come back as NaN (int8 keeps them
as the code -128, which the symmetric range never uses; fp8 e4m3 has a NaN code), so a
broken model still shows as broken, and each packed value counts them (`nonfinite`, a
device tensor: counting costs no host sync) for the strategy's stats to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dqar_bench.core.parts import Quantizer


class Scaled:
    """Codes and their scales; `unpack` gives `codes * scales` back in the original dtype,
    with NaN where a non-finite value was packed."""

    __slots__ = ("codes", "scales", "dtype", "shape", "nonfinite", "nan_code")

    def __init__(
        self,
        codes: torch.Tensor,
        scales: torch.Tensor,
        dtype: torch.dtype,
        shape: torch.Size,
        nonfinite: torch.Tensor | None = None,
        nan_code: int | None = None,
    ) -> None:
        self.codes, self.scales, self.dtype, self.shape = codes, scales, dtype, shape
        self.nonfinite = nonfinite if nonfinite is not None else torch.zeros((), dtype=torch.int64, device=codes.device)
        self.nan_code = nan_code

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()

    def unpack(self) -> torch.Tensor:
        values = self.codes.to(torch.float32) * self.scales
        if self.nan_code is not None:
            values = values.masked_fill(self.codes == self.nan_code, float("nan"))
        return values.to(self.dtype).reshape(self.shape)


def scales_for(amax: torch.Tensor, code_max: float) -> torch.Tensor:
    """`amax / code_max` in float32, never below the smallest normal float (no 0 / 0 later)."""
    return (amax.to(torch.float32) / code_max).clamp_min_(torch.finfo(torch.float32).tiny)


def finite_amax(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """max |x| over `dims` (kept) among the finite values only, and the mask of finite values."""
    finite = torch.isfinite(x)
    magnitude = torch.where(finite, x.abs(), torch.zeros((), dtype=x.dtype, device=x.device))
    amax = magnitude.amax(dim=dims, keepdim=True) if dims else magnitude
    return amax, finite


class NonFiniteCounter:
    """Non-finite values packed since the quantizer first began, kept in one device tensor
    that is added to in place: no host sync in the forward, and the same tensor under a
    CUDA graph (it is made in `begin`, outside any capture)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None

    def begin(self, device: torch.device) -> None:
        if self.total is None or self.total.device != device:
            self.total = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, count: torch.Tensor) -> None:
        if self.total is not None:
            self.total.add_(count.to(self.total.device))

    def read(self) -> int:
        return int(self.total) if self.total is not None else 0


@dataclass
class ScaledQuantizer(Quantizer):
    """A quantizer that keeps NaN and inf as codes and counts them: the counter, made on the
    call's device in `begin` and read by `nonfinite`, held once for `int8` and `fp8`. Its
    `pack` adds each tensor's count with `self._nonfinite.add`."""

    _nonfinite: NonFiniteCounter = field(default_factory=NonFiniteCounter, init=False, repr=False, compare=False)

    def begin(self, device: torch.device) -> None:
        self._nonfinite.begin(device)

    def nonfinite(self) -> int:
        return self._nonfinite.read()
