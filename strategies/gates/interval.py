"""Gate `interval`: recompute every N-th step and reuse in between (FORA, PAB)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dqar_bench import Gate, StepContext, hookimpl


@dataclass
class Interval(Gate):
    """Compute on steps 0, N, 2N, ...; reuse the cache on the steps in between."""

    PLUGIN_NAME = "interval"

    every: int = field(default=2, metadata={"help": "N: compute on every N-th step"})

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"parameter 'every' must be >= 1, got {self.every}")

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        reuse = ctx.step % self.every != 0
        return [reuse and e for e in eligible]


@hookimpl
def register_gates():
    return [Interval]
