"""Cache `forecast`: TaylorSeer's forecast of each block's attention and MLP outputs.

TaylorSeer (Liu et al. 2025, "From Reusing to Forecasting") keeps, per block and module,
the output F at its last full computation and its finite-difference derivatives, built
recursively at every full computation: dF_{j+1} = (dF_j(now) - dF_j(before)) / d, d the
steps between the last two computations. On the steps in between it predicts
F(t + x) = sum_j dF_j x^j / j!, x the steps since the last computation. Order 0 is plain
reuse (FORA); the expansion reaches `order` once enough computations were seen. The
official DiT code recomputes in full on the first two steps, then every N-th (the
`warmup-interval` gate, `every: N, warmup: 2`); its recommended DiT-XL/2 setting is N = 4,
order 4 (reported 3.57x fewer FLOPs).

Why our own and not diffusers' `apply_taylorseer_cache`: its default module patterns
(`^transformer_blocks.*attn`) fully match no module of a DiT (`attn1`), it counts steps by
calls of each hooked module, and it keeps its state where no CUDA graph can replay it.
Here the bookkeeping (steps, orders, coefficients) is done in `begin_step` and the
forward does tensor work only, so it runs eager, compiled and under CUDA graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dqar_bench import Cache, hookimpl
from dqar_bench.storage import Slots


@dataclass
class Forecast(Cache):
    """Forecast attention and MLP outputs by a Taylor expansion over their last computations (TaylorSeer)."""

    PLUGIN_NAME = "forecast"
    TARGET = "attention+mlp"
    UNSUPPORTED = {}
    MAX_ORDER = 4

    order: int = field(default=2, metadata={"help": "highest derivative of the expansion (0 = plain reuse), at most 4"})

    _held: Slots[tuple[int, int]] = field(default_factory=Slots, init=False, repr=False)
    _last: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _factors: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _inverse_gap: dict[int, float] = field(default_factory=dict, init=False, repr=False)
    _coefficients: dict[int, tuple[float, ...]] = field(default_factory=dict, init=False, repr=False)
    _key: tuple = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.order <= self.MAX_ORDER:
            raise ValueError(f"parameter 'order' must be in 0..{self.MAX_ORDER}, got {self.order}")

    def clear(self) -> None:
        self._held.clear(self.pinned)
        self._last.clear()
        self._factors.clear()
        self._inverse_gap.clear()
        self._coefficients.clear()
        self._key = ()

    def holds(self, block: int) -> bool:
        return block in self._last

    def begin_step(self, step: int, computes: list[bool]) -> None:
        """Steps, orders and coefficients for this step, so the forward only does tensor work."""
        key = []
        for block, compute in enumerate(computes):
            last = self._last.get(block)
            if compute:
                gap = step - last if last is not None else 0
                self._factors[block] = 1 if last is None else min(self._factors[block] + 1, self.order + 1)
                self._inverse_gap[block] = 1.0 / gap if gap else 0.0
                self._last[block] = step
                key.append(("compute", self._factors[block], gap))
            elif last is not None:
                x = step - last
                self._coefficients[block] = tuple(x**j / math.factorial(j) for j in range(self._factors[block]))
                key.append(("forecast", self._coefficients[block]))
        self._key = tuple(key)

    def graph_key(self) -> tuple:
        return self._key

    def store(self, block: int, out: torch.Tensor, qkv: tuple[torch.Tensor, ...] | None) -> None:
        factors = [out.float()]
        for j in range(self._factors[block] - 1):
            before = self._held[(block, j)].unpack().float()
            factors.append((factors[j] - before) * self._inverse_gap[block])
        for j, factor in enumerate(factors):  # all derived from the old ones before any is overwritten
            self._held.put((block, j), self.quantizer.pack(factor.to(out.dtype)), self.pinned)

    def reuse(self, block: int, module: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        coefficients = self._coefficients[block]
        out = self._held[(block, 0)].unpack().float()
        for j in range(1, len(coefficients)):
            out = out + self._held[(block, j)].unpack().float() * coefficients[j]
        return out.to(hidden_states.dtype)

    def nbytes(self) -> int:
        return self._held.nbytes()


@hookimpl
def register_caches():
    return [Forecast]
