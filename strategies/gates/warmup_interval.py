"""Gate `warmup-interval`: compute the first steps, then every N-th step (TaylorSeer's cadence).

TaylorSeer's official DiT code recomputes in full on the first `warmup` (its
`first_enhance`, 2) steps, then every N-th step counted from the last of them: with N = 4,
steps 0, 1, 5, 9, 13, ... The `interval` gate's steps 0, N, 2N, ... are the case
`warmup: 1`; the two are kept apart so that FORA's and PAB's gate stays one parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dqar_bench import StepContext, hookimpl
from strategies.gates.interval import Interval


@dataclass
class WarmupInterval(Interval):
    """Compute on the first `warmup` steps, then every N-th step counted from the last of them."""

    PLUGIN_NAME = "warmup-interval"

    warmup: int = field(default=2, metadata={"help": "full computations before the cadence starts (>= 1)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warmup < 1:
            raise ValueError(f"parameter 'warmup' must be >= 1 (step 0 has nothing cached), got {self.warmup}")

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        reuse = ctx.step >= self.warmup and (ctx.step - self.warmup + 1) % self.every != 0
        return [reuse and e for e in eligible]


@hookimpl
def register_gates():
    return [WarmupInterval]
