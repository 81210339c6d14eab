"""Scheduler `step`: reuse widens in phases (the DQAR seed's default schedule).

With phase ends 0.3 and 0.7 there are three phases: the shallowest third of the
candidate blocks may reuse in the first, two thirds in the second, all of them in the last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dqar_bench import hookimpl
from dqar_bench.strategies.schedulers.ramp import RampScheduler, check_fraction


@dataclass
class Step(RampScheduler):
    """Shallow blocks first; the eligible share jumps at each phase end (k+1 phases of 1/(k+1))."""

    PLUGIN_NAME = "step"

    phase_ends: list[float] = field(
        default_factory=lambda: [0.3, 0.7],
        metadata={"help": "increasing shares of the post-warmup steps where each phase ends"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for end in self.phase_ends:
            check_fraction("phase_ends", end)
        if any(b <= a for a, b in zip(self.phase_ends, self.phase_ends[1:])):
            raise ValueError(f"parameter 'phase_ends' must be strictly increasing, got {self.phase_ends}")

    def share(self, u: torch.Tensor) -> torch.Tensor:
        ends = torch.tensor(self.phase_ends, dtype=u.dtype)
        # A step is in phase k once it ends past k phase ends (u is the share done after it).
        phase = (u.unsqueeze(1) > ends.unsqueeze(0) + 1e-9).sum(dim=1)
        return (phase + 1).to(u.dtype) / (len(self.phase_ends) + 1)


@hookimpl
def register_schedulers():
    return [Step]
