"""What the depth-ordered schedulers share: their parameters and their mask arithmetic.

A ramp scheduler says how fast reuse spreads through the blocks. Blocks are taken in an
order (shallow to deep, or deep to shallow for a `REVERSE` one) and only the first
`layer_fraction` of them are candidates at all. The first `warmup` share of the steps
reuses nothing. After that a progress `u` runs over the remaining steps, from
1 / (steps left) at the first to 1 at the last, and the subclass's `share(u)` says which
share of the candidates may reuse: the block of rank r (0 = first in the order) is
eligible once `share(u) * candidates > r`. Shapes differ only in `share`; validation and
rounding live here once.

Warmup and shape are independent knobs: the shape is stretched over the steps after the
warmup, so a step schedule's phase ends are shares of those steps, not of the whole call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from dqar_bench import Scheduler

# Shares are products of floats such as 0.3 * 20; this keeps 6.000000000000001 at 6.
_EPS = 1e-9


def check_fraction(name: str, value: float) -> None:
    """A share must lie in [0, 1]; the message names the parameter (it becomes a suite error)."""
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"parameter '{name}' must be a fraction in [0, 1], got {value}")


def warmup_steps(num_steps: int, warmup: float) -> int:
    """Steps from the start with no reuse at all: the `warmup` share, rounded up."""
    return min(num_steps, math.ceil(warmup * num_steps - _EPS))


def candidate_blocks(num_blocks: int, layer_fraction: float) -> int:
    """How many blocks may ever reuse: at most `layer_fraction` of them, so rounded down."""
    return min(num_blocks, math.floor(layer_fraction * num_blocks + _EPS))


@dataclass
class RampScheduler(Scheduler):
    """Base of the depth-ordered schedulers; not registered itself."""

    REVERSE: ClassVar[bool] = False

    layer_fraction: float = field(default=0.5, metadata={"range": (0.0, 1.0), "help": "largest share of blocks that may reuse, in [0, 1]"})
    warmup: float = field(default=0.0, metadata={"range": (0.0, 0.5), "help": "share of steps, from the start, with no reuse, in [0, 1]"})

    def __post_init__(self) -> None:
        check_fraction("layer_fraction", self.layer_fraction)
        check_fraction("warmup", self.warmup)

    def share(self, u: torch.Tensor) -> torch.Tensor:
        """Share of the candidate blocks eligible at post-warmup progress `u` in (0, 1]."""
        raise NotImplementedError

    def mask(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        mask = torch.zeros(num_steps, num_blocks, dtype=torch.bool)
        start = warmup_steps(num_steps, self.warmup)
        candidates = candidate_blocks(num_blocks, self.layer_fraction)
        if start >= num_steps or candidates == 0:
            return mask
        after = num_steps - start
        u = torch.arange(1, after + 1, dtype=torch.float64) / after
        eligible = torch.ceil(self.share(u).clamp(0.0, 1.0) * candidates - _EPS).long()  # per step
        rank = torch.arange(num_blocks)
        if self.REVERSE:
            rank = num_blocks - 1 - rank
        mask[start:] = rank.unsqueeze(0) < eligible.unsqueeze(1)
        return mask
