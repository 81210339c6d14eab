"""Scheduler `front-rear`: Delta-DiT's stage-adaptive block ranges.

Source: Chen et al. 2024, "Delta-DiT: A Training-Free Acceleration Method Tailored for
Diffusion Transformers" (arXiv 2406.01125; no code was published with it). DiT's front
blocks shape the outline and its rear blocks the details, so it caches the deviation of
the *rear* blocks in the early steps (while the outline forms, the front blocks must
compute) and of the *front* blocks in the late steps. With the `block-residual` cache a
run of reused blocks adds its stored residuals, which is the Delta-Cache of that block
range; with the `interval` gate (N = 2) it refreshes every N-th step.

The settings are fractions so one setting fits DiT-XL/2 and PixArt-alpha (28 blocks) and
the tiny test models:

- `boundary` is the share of the steps in the early stage. The paper's boundary b counts
  sampling steps down (t = T .. 1, rear blocks cached while t > b); its 20-step PixArt-alpha
  row is "b = 12" (Table 1, as the public ICLR 2025 review of the paper quotes it), which
  leaves 20 - 12 = 8 early steps: 0.4 of the steps. At other step counts the boundary
  scales with them: 10 of 25 steps, 20 of 50.
- `blocks` is N_c / N, the share of the blocks in the cached range: 0.75 = 21 of 28. That
  number is our reading of the paper and could not be checked against its text here
  (only its abstract and reviews were at hand); check it before quoting the paper's 1.6x.

Both round to the nearest whole number, halves to even (Python's `round`): 0.75 of a
6-block model is round(4.5) = 4 blocks, 0.67 of them, and 0.75 of 4 blocks is 3. A range
never rounds to more blocks than the model has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dqar_bench import Scheduler, hookimpl


@dataclass
class FrontRear(Scheduler):
    """Rear blocks may reuse before the boundary step, front blocks after it (Delta-DiT)."""

    PLUGIN_NAME = "front-rear"

    blocks: float = field(default=0.75, metadata={"range": (0.0, 1.0), "help": "share of the blocks in the cached range (N_c / N), rounded to the nearest block (halves to even)"})
    boundary: float = field(default=0.4, metadata={"range": (0.0, 1.0), "help": "share of the steps in the early stage (rear blocks cached), rounded like blocks"})

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
