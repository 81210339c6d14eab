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

The forward always runs the same operations: all `order + 1` factors are kept, and the
step-dependent scalars (1/d where a derivative exists, x^j/j! where a factor exists, 0
elsewhere) are written into one device tensor in `begin_step`, before the forward. So a
forecast step and a compute step are one compiled graph / one CUDA graph each, whatever
the step, instead of one per distance and order (18 instead of 2 on 20 steps at order 4);
the price is a few multiplications by zero while the expansion builds up. Under CUDA
graphs (`pinned`) the factors of a previous sampling call stay in memory (multiplied by
zero until recomputed), so their tensors never move under a captured graph; otherwise
`clear` drops them, as every cache does.

Why our own and not diffusers' `apply_taylorseer_cache`: its default module patterns
(`^transformer_blocks.*attn`) fully match no module of a DiT (`attn1`), it counts steps by
calls of each hooked module, and it keeps its state where no CUDA graph can replay it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from dqar_bench import Cache, hookimpl
from dqar_bench.strategy.storage import Slots, pack, streams_map, unpack


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
    _scalars: torch.Tensor | None = field(default=None, init=False, repr=False)
    """[blocks, 2, order + 1]: per block, the derivative multipliers (row 0) and the
    forecast coefficients (row 1) of the current step."""

    def __post_init__(self) -> None:
        if not 0 <= self.order <= self.MAX_ORDER:
            raise ValueError(f"parameter 'order' must be in 0..{self.MAX_ORDER}, got {self.order}")

    @property
    def terms(self) -> int:
        return self.order + 1

    def clear(self) -> None:
        self._held.clear(self.pinned)  # as SlotCache: only under CUDA graphs do the tensors stay
        self._last.clear()
        self._factors.clear()

    def begin(self, num_blocks: int, device: torch.device) -> None:
        shape = (num_blocks, 2, self.terms)
        if self._scalars is None or tuple(self._scalars.shape) != shape or self._scalars.device != device:
            self._scalars = torch.zeros(shape, device=device)

    def holds(self, block: int) -> bool:
        return block in self._last

    def begin_step(self, step: int, computes: list[bool]) -> None:
        """The step's scalars, so the forward does the same tensor work at every step."""
        assert self._scalars is not None, "begin() must be called before the first step"
        host = torch.zeros(tuple(self._scalars.shape))
        for block, compute in enumerate(computes):
            last = self._last.get(block)
            if compute:
                factors = 1 if last is None else min(self._factors[block] + 1, self.terms)
                gap = step - last if last is not None else 0
                for j in range(factors - 1):  # dF_{j+1} exists after this computation
                    host[block, 0, j] = 1.0 / gap
                self._factors[block] = factors
                self._last[block] = step
            elif last is not None:
                x = step - last
                for j in range(self._factors[block]):
                    host[block, 1, j] = x**j / math.factorial(j)
        if self._scalars.device.type == "cuda":
            host = host.pin_memory()
        self._scalars.copy_(host, non_blocking=True)

    def store(self, block: int, out: Any, qkv: tuple[torch.Tensor, ...] | None) -> None:
        """`out` is a tensor or, on a joint image-text module, a tuple: each is expanded alike."""
        assert self._scalars is not None
        multipliers = self._scalars[block, 0]
        factors = [streams_map(torch.Tensor.float, out)]
        for j in range(self.terms - 1):
            before = self._held.get((block, j))
            if before is None:  # the very first computation of this block: higher factors start at zero
                factors.append(streams_map(torch.zeros_like, factors[0]))
            else:
                old = unpack(before, torch.float32)
                factors.append(streams_map(lambda now, was, m=multipliers[j]: (now - was) * m, factors[j], old))
        for j, factor in enumerate(factors):  # all derived from the old ones before any is overwritten
            typed = streams_map(lambda f, o: f.to(o.dtype), factor, out)
            self._held.put((block, j), pack(self.quantizer, typed), self.pinned)

    def reuse(self, block: int, module: torch.nn.Module, hidden_states: torch.Tensor) -> Any:
        assert self._scalars is not None
        coefficients = self._scalars[block, 1]
        out = unpack(self._held[(block, 0)], torch.float32)
        for j in range(1, self.terms):
            term = unpack(self._held[(block, j)], torch.float32)
            out = streams_map(lambda acc, t, c=coefficients[j]: acc + t * c, out, term)
        return streams_map(lambda o: o.to(hidden_states.dtype), out)

    def nbytes(self) -> int:
        return self._held.nbytes()


@hookimpl
def register_caches():
    return [Forecast]
