"""Scheduler `front-rear`: Delta-DiT's stage-adaptive block ranges.

Delta-DiT (Chen et al. 2024) finds that DiT's front blocks shape the outline and its rear
blocks the details, so it caches the deviation of the *rear* blocks in the early steps
(while the outline forms, the front blocks must compute) and of the *front* blocks in the
late steps. With the `block-residual` cache a run of reused blocks adds its stored
residuals, which is exactly the Delta-Cache of that block range; with the `interval` gate
(N = 2) it refreshes every N-th step.

The sizes are fractions so one setting fits DiT-XL/2 (28 blocks) and the tiny test
models: `blocks` is N_c / N (0.75 = 21 of 28 blocks) and `boundary` is the share of the
steps before the switch (the paper's b; 0.4 = 8 of 20 steps). These are our reading of
the paper's 20-step PixArt-alpha / DiT-XL settings (N = 2, N_c = 21; 1.6x) and should
be checked against it before its figures are quoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dqar_bench import Scheduler, hookimpl


@dataclass
class FrontRear(Scheduler):
    """Rear blocks may reuse before the boundary step, front blocks after it (Delta-DiT)."""

    PLUGIN_NAME = "front-rear"

    blocks: float = field(default=0.75, metadata={"help": "share of the blocks in the cached range (N_c / N)"})
    boundary: float = field(default=0.4, metadata={"help": "share of the steps in the early stage (rear blocks cached)"})

    def __post_init__(self) -> None:
        for name in ("blocks", "boundary"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"parameter '{name}' must be in [0, 1], got {value}")

    def mask(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        cached = round(self.blocks * num_blocks)
        switch = round(self.boundary * num_steps)
        mask = torch.zeros(num_steps, num_blocks, dtype=torch.bool)
        if cached:
            mask[:switch, num_blocks - cached:] = True  # early: the rear range
            mask[switch:, :cached] = True  # late: the front range
        return mask


@hookimpl
def register_schedulers():
    return [FrontRear]
