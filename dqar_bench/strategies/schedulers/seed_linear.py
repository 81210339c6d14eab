"""Scheduler `seed-linear`: the DQAR seed's own linear layer schedule, arithmetic and all.

This is the schedule behind the seed's published A100 table (DiT-XL/2-256, 50 DDIM steps):
its benchmark scripts (`scripts/layer_sweep.py`, `scripts/warmup_sweep.py`) patch
`LayerScheduler._linear_schedule` to, at step t of N,

    p = t / max(1, N - 1)                       # 0 at the first step, 1 at the last
    no reuse while p < warmup
    n = int((p - warmup) / (1 - warmup) * int(L * layer_fraction))
    the first n blocks (shallow first) may reuse

in Python floats, rounding down twice. On DiT-XL's 28 blocks with warmup 0.2 that allows
11.6 / 18.7 / 24.5 / 38.7 % of the block evaluations for layer fractions 0.33 / 0.5 /
0.66 / 1.0, which with the `always` gate is exactly the seed's reuse column. The floats
matter: where the product is a whole number (t = 21 of 50 at f = 0.5 gives exactly 4),
`t / 49 - 0.2` lands just below it and the floor loses a block; in exact arithmetic the
column would read 11.6 / 18.8 / 24.5 / 39.0 %. This part keeps the seed's arithmetic.

It differs from `linear` on purpose, and `linear` stays as it is: `linear` counts progress
over the post-warmup steps only (1 / (steps left) at the first, 1 at the last) and rounds
the eligible count up, so reuse starts at the first step after the warmup and reaches
every candidate block by the last; the seed's floor keeps fewer blocks eligible at every
step (`layer_fraction` = 1.0 still reaches all blocks only at the very last step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dqar_bench import Scheduler, hookimpl
from dqar_bench.strategies.schedulers.ramp import check_fraction


def seed_eligible_blocks(step: int, num_steps: int, num_blocks: int, layer_fraction: float, warmup: float) -> int:
    """How many shallow blocks the seed lets reuse at `step`, in its own float arithmetic."""
    progress = step / max(1, num_steps - 1)
    if progress < warmup or warmup >= 1.0:  # the seed divides by (1 - warmup): nothing reuses at 1
        return 0
    adjusted = (progress - warmup) / (1 - warmup)
    return min(num_blocks, int(adjusted * int(num_blocks * layer_fraction)))


@dataclass
class SeedLinear(Scheduler):
    """The DQAR seed's linear schedule: after the warmup share, floor(progress * floor(f * L)) shallow blocks."""

    PLUGIN_NAME = "seed-linear"

    layer_fraction: float = field(default=1.0, metadata={"range": (0.0, 1.0), "help": "f: at most int(f * L) blocks ever reuse, in [0, 1]"})
    warmup: float = field(default=0.2, metadata={"range": (0.0, 0.5), "help": "no reuse while t / (N - 1) < warmup, in [0, 1]"})

    def __post_init__(self) -> None:
        check_fraction("layer_fraction", self.layer_fraction)
        check_fraction("warmup", self.warmup)

    def mask(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        mask = torch.zeros(num_steps, num_blocks, dtype=torch.bool)
        for step in range(num_steps):
            mask[step, : seed_eligible_blocks(step, num_steps, num_blocks, self.layer_fraction, self.warmup)] = True
        return mask


@hookimpl
def register_schedulers():
    return [SeedLinear]
