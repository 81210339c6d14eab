"""Gate `never`: always compute. With a cache installed it measures the harness's own cost."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dqar_bench import StaticGate, hookimpl


@dataclass
class Never(StaticGate):
    """Never reuse: every block computes at every step (the baseline's behaviour)."""

    PLUGIN_NAME = "never"

    def pattern(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        return torch.zeros(num_steps, num_blocks, dtype=torch.bool)


@hookimpl
def register_gates():
    return [Never]
