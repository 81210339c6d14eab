"""Gate `residual-change`: FirstBlockCache's decision, made once block 0 has computed: DBCache F1B0.

FirstBlockCache (ParaAttention; diffusers' `apply_first_block_cache`) always runs the
first block, measures how far its residual moved since the last step where every block
ran, `mean|r0 - r0_ref| / mean|r0_ref|`, and unless that is above a threshold skips all
later blocks, adding their cached residual instead. With the `block-residual` cache the
cached residuals of blocks 1..N-1 add up to exactly that tail residual. It is cache-dit's
DBCache with one compute block, no tail and no warm-up (`dbcache` with `fn: 1, bn: 0,
warmup: 0`), kept under this name with diffusers' default threshold.

It caches at `change < threshold`, as cache-dit does; diffusers' hook caches at `<=` (it
computes where `diff > threshold`). They differ only where the change equals the threshold
exactly, e.g. a threshold of 0 with bit-identical residuals (see `dbcache`, docs/peers.md).

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

from dqar_bench import hookimpl
from dqar_bench.strategies.gates.dbcache import DBCache


@dataclass
class ResidualChange(DBCache):
    """Skip blocks 1..N-1 (reuse their residual) while block 0's residual changed by less than a threshold (DBCache F1B0)."""

    PLUGIN_NAME = "residual-change"

    CONFORMANCE_PARAMS = {"threshold": 1e9}
    """Wide open, for `dqar_bench.testing`: a tiny model's residuals change more than a trained one's."""

    threshold: float = field(default=0.05, metadata={"range": (0.01, 0.5), "help": "relative L1 change of block 0's residual below which the rest is reused (diffusers' default)"})
    fn: int = field(default=1, metadata={"help": "Fn: leading blocks that always compute (FirstBlockCache: 1)"})
    bn: int = field(default=0, metadata={"help": "Bn: trailing blocks that always compute (FirstBlockCache: 0)"})
    warmup: int = field(default=0, metadata={"help": "leading steps that never cache (FirstBlockCache: 0)"})


@hookimpl
def register_gates():
    return [ResidualChange]
