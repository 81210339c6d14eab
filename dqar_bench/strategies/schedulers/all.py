"""Scheduler `all`: every block may reuse at every step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dqar_bench import Scheduler, hookimpl


@dataclass
class AllBlocks(Scheduler):
    """Every block is eligible at every step; the gate alone decides."""

    PLUGIN_NAME = "all"

    def mask(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        return torch.ones(num_steps, num_blocks, dtype=torch.bool)


@hookimpl
def register_schedulers():
    return [AllBlocks]
