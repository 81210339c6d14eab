"""Gate `residual-change`: FirstBlockCache's decision, made once block 0 has computed.

FirstBlockCache (ParaAttention; diffusers' `apply_first_block_cache`) always runs the
first block, measures how far its residual moved since the last step where every block
ran, `mean|r0 - r0_ref| / mean|r0_ref|`, and unless that is above a threshold skips all
later blocks, adding their cached residual instead. With the `block-residual` cache the
cached residuals of blocks 1..N-1 add up to exactly that tail residual.

The decision happens inside the forward, which breaks the harness's rule of deciding at
the start of a step. It is modelled, not wrapped: the gate says `DECIDES_AFTER_BLOCK = 0`,
the strategy measures the signal at block 0 of the current forward and asks the gate then
(one host sync per step, as for every other gate). That keeps it a four-kinds assembly
(gate + block-residual cache + any scheduler), shares the harness's timer, counters and
table, and lets its signal be recorded like any other. The price: no CUDA graph can hold
a decision taken mid-forward, so it is unsupported in that mode (it runs compiled, with a
graph break at the decision). diffusers' hook needs a `TransformerBlockRegistry` entry
and a cache context that DiT's pipeline never sets; it is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.strategy.signals import RESIDUAL_CHANGE


@dataclass
class ResidualChange(Gate):
    """Skip blocks 1..N-1 (reuse their residual) while block 0's residual changed by at most a threshold."""

    PLUGIN_NAME = "residual-change"
    SIGNALS = frozenset({RESIDUAL_CHANGE})
    DECIDES_AFTER_BLOCK = 0
    UNSUPPORTED = {"cudagraph": "decides inside the forward (after block 0), which no captured graph can hold"}

    threshold: float = field(default=0.05, metadata={"range": (0.01, 0.5), "help": "relative L1 change of block 0's residual up to which the rest is reused (diffusers' default)"})

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"parameter 'threshold' must be >= 0, got {self.threshold}")

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        reuse = ctx.signals[RESIDUAL_CHANGE] <= self.threshold  # diffusers computes where the change is > threshold
        return [reuse and e for e in eligible]


@hookimpl
def register_gates():
    return [ResidualChange]
