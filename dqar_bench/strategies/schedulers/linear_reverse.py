"""Scheduler `linear-reverse`: like `linear`, but the deep blocks may reuse first."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dqar_bench import hookimpl
from dqar_bench.strategies.schedulers.ramp import RampScheduler


@dataclass
class LinearReverse(RampScheduler):
    """Deep blocks may reuse first; the share of eligible blocks grows linearly with the steps."""

    PLUGIN_NAME = "linear-reverse"
    REVERSE = True

    def share(self, u: torch.Tensor) -> torch.Tensor:
        return u


@hookimpl
def register_schedulers():
    return [LinearReverse]
