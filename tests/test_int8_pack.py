"""The lean int8 pack gives the textbook pack's codes and scales bit for bit, in this process."""

from __future__ import annotations

import pytest
import torch

from dqar_bench.strategies.quantizers.int8 import CODE_MAX, NAN_CODE, Int8
from dqar_bench.strategies.quantizers.scaled import finite_amax, scales_for


def textbook_pack(quantizer: Int8, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The pack as it was written first: finite mask, masked max, divide, round, clamp, fill."""
    view, keep = quantizer._groups(x)
    dims = tuple(d for d in range(view.ndim) if d not in keep)
    amax, finite = finite_amax(view, dims)
    scales = scales_for(amax, CODE_MAX)
    codes = (view.to(torch.float32) / scales).round_().clamp_(-CODE_MAX, CODE_MAX)
    codes = codes.masked_fill_(~finite, NAN_CODE).to(torch.int8)
    return codes, scales, int((~finite).sum())


def _inputs(dtype: torch.dtype, shape: tuple[int, ...]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    spread = torch.randn(shape, generator=gen) * torch.logspace(-3, 3, shape[-1])
    with_bad = spread.clone()
    flat = with_bad.view(-1)
    flat[3], flat[11], flat[-1] = float("nan"), float("inf"), float("-inf")
    n = spread.numel()
    ties = (torch.arange(n, dtype=torch.float32) - n // 2).reshape(shape) / 2  # many exact .5 steps
    tiny = torch.full(shape, 1e-40)  # subnormal: the scale is floored
    return [t.to(dtype) for t in (spread, with_bad, ties, tiny, torch.zeros(shape), torch.full(shape, float("nan")))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode, heads, shape", [
    ("per_tensor", None, (2, 16, 32)),
    ("per_channel", None, (2, 16, 32)),
    ("per_head", 4, (2, 16, 32)),
    ("per_head", None, (2, 4, 16, 8)),
    ("per_tensor", None, ()),
])
def test_the_lean_pack_gives_the_textbook_codes_bit_for_bit(dtype, mode, heads, shape):
    quantizer = Int8(mode=mode, heads=heads)
    quantizer.begin(torch.device("cpu"))
    for x in _inputs(dtype, shape if shape else (1,)) if shape else [torch.tensor(2.5, dtype=dtype), torch.tensor(float("nan"), dtype=dtype)]:
        codes, scales, bad = textbook_pack(quantizer, x)
        before = quantizer.nonfinite()
        packed = quantizer.pack(x)
        assert torch.equal(packed.codes, codes) and packed.codes.dtype == torch.int8
        assert torch.equal(packed.scales, scales) and packed.scales.dtype == torch.float32
        assert int(packed.nonfinite) == bad and quantizer.nonfinite() - before == bad
