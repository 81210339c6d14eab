"""Gate `interval`: recompute every N-th step and reuse in between (FORA, PAB).

Which steps are "every N-th" differs between the references, and at most step counts it
changes the result:

- `anchor: start` (steps 0, N, 2N, ...) is PAB's: diffusers' `PyramidAttentionBroadcastHook`
  counts the calls of each attention module from 0 and computes where `iteration % N == 0`.
- `anchor: end` is FORA's: its DiT code (`prathebaselva/FORA`, `src/models.py`,
  `boost_infer_static`) counts the sampling loop's index down from `num_steps - 1` to 0 and
  computes at the first step and wherever that countdown index is a multiple of N, so the
  last step always computes. At 25 steps with N = 3 both anchors give 0, 3, ..., 24; at 20
  FORA computes 0, 1, 4, 7, ..., 19 and at 50 0, 1, 4, ..., 49.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from dqar_bench import StaticGate, hookimpl


def check_every(every: int) -> None:
    if every < 1:
        raise ValueError(f"parameter 'every' must be >= 1, got {every}")


def step_rows(reuse: list[bool], num_blocks: int) -> torch.Tensor:
    """A per-step answer, the same for every block: [num_steps, num_blocks]."""
    return torch.tensor(reuse, dtype=torch.bool).reshape(-1, 1).expand(len(reuse), num_blocks).clone()


@dataclass
class Interval(StaticGate):
    """Compute every N-th step (counted from the first step, or back from the last), reuse in between."""

    PLUGIN_NAME = "interval"

    every: int = field(default=2, metadata={"range": (1, 6), "help": "N: compute on every N-th step"})
    anchor: Literal["start", "end"] = field(
        default="start",
        metadata={"help": "start: steps 0, N, 2N, ... (PAB, diffusers); end: step 0 and every N-th counted back from the last step (FORA's code)"},
    )

    def __post_init__(self) -> None:
        check_every(self.every)

    def computes(self, step: int, num_steps: int) -> bool:
        if self.anchor == "start":
            return step % self.every == 0
        return step == 0 or (num_steps - 1 - step) % self.every == 0

    def pattern(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        return step_rows([not self.computes(s, num_steps) for s in range(num_steps)], num_blocks)


@hookimpl
def register_gates():
    return [Interval]
