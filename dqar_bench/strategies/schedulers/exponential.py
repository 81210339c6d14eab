"""Scheduler `exponential`: few blocks reuse for most of the call, the deep ones join at the end.

Late steps change the latent least, so that is where reuse is cheapest in quality; the
curve `(e^(rate*u) - 1) / (e^rate - 1)` keeps reuse shallow until late and then widens fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dqar_bench import hookimpl
from dqar_bench.strategies.schedulers.ramp import RampScheduler


@dataclass
class Exponential(RampScheduler):
    """Shallow blocks first; the share of eligible blocks grows exponentially with the steps."""

    PLUGIN_NAME = "exponential"

    rate: float = field(default=3.0, metadata={"help": "growth rate; larger keeps reuse shallow for longer"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.rate <= 50.0:
            raise ValueError(f"parameter 'rate' must be in (0, 50], got {self.rate}")

    def share(self, u: torch.Tensor) -> torch.Tensor:
        return torch.expm1(self.rate * u) / math.expm1(self.rate)


@hookimpl
def register_schedulers():
    return [Exponential]
