"""Exact FLOPs of a sampling call: the work a strategy removed, counted rather than estimated.

`torch.utils.flop_counter.FlopCounterMode` sees every aten operation as it runs and counts
matrix products, convolutions and attention from their shapes, so whatever a strategy
skipped (a reused attention) or added (an entropy probe, a forecast) is in the figure, and
the figure is the same on every machine. Elementwise work (norms, softmax, activations)
has no formula there and counts zero, as in the papers' FLOP figures.

On the CPU, `scaled_dot_product_attention` runs as
`aten._scaled_dot_product_flash_attention_for_cpu`, which torch's table lacks (it would
count 0 FLOPs): it is registered here with torch's own SDPA formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

T = TypeVar("T")

MISSING_ATTENTION_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
"""Attention kernels torch's FLOP table does not know; all take (query, key, value, ...)."""


def _attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _register() -> None:
    for name in MISSING_ATTENTION_OPS:
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_registry:
            register_flop_formula(op)(_attention_flops)


_register()


@dataclass(frozen=True)
class FlopCount:
    """The FLOPs of one call, in all and per operation (`aten.addmm`, ...)."""

    total: int
    by_op: dict[str, int]


def count_flops(fn: Callable[[], T]) -> tuple[T, FlopCount]:
    """Run `fn` once under a FLOP counter; its result and what it cost.

    The counter changes no numerics (it runs the same kernels), so the result is the one
    an uncounted call gives."""
    counter = FlopCounterMode(display=False)
    with counter:
        result = fn()
    counts = counter.get_flop_counts().get("Global", {})
    by_op = {str(op): int(n) for op, n in sorted(counts.items(), key=lambda item: str(item[0])) if n}
    return result, FlopCount(sum(by_op.values()), by_op)


def summarize(per_seed: dict[int, FlopCount]) -> dict[str, Any]:
    """The record's `flops`: per call (the mean over seeds; an exact integer where they
    agree), per seed, and per operation (mean over seeds)."""
    if not per_seed:
        raise ValueError("no FLOP counts to summarize")
    counts = list(per_seed.values())
    ops = sorted({op for c in counts for op in c.by_op})
    return {
        "per_call": _mean([c.total for c in counts]),
        "per_seed": {str(seed): c.total for seed, c in per_seed.items()},
        "by_op": {op: _mean([c.by_op.get(op, 0) for c in counts]) for op in ops},
    }


def per_call(flops: dict[str, Any] | None) -> int | None:
    """The FLOPs of one sampling call from a record's `flops`, or None where it has none (an
    older record, a failed case): the one reader of `flops.per_call` for tables, summaries and `compare`."""
    value = (flops or {}).get("per_call")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _mean(values: list[int]) -> int | float:
    if len(set(values)) == 1:
        return values[0]
    return sum(values) / len(values)
