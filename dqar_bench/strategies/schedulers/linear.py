"""Scheduler `linear`: reuse spreads from the shallow blocks to the deep ones at an even pace."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dqar_bench import hookimpl
from dqar_bench.strategies.schedulers.ramp import RampScheduler


@dataclass
class Linear(RampScheduler):
    """Shallow blocks may reuse first; the share of eligible blocks grows linearly with the steps."""

    PLUGIN_NAME = "linear"

    def share(self, u: torch.Tensor) -> torch.Tensor:
        return u


@hookimpl
def register_schedulers():
    return [Linear]
