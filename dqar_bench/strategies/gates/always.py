"""Gate `always`: reuse whenever the scheduler allows it and the cache holds something.

This is the DQAR seed's benchmark path (the one behind its published A100 table): there
the layer schedule alone decides, with no entropy or SNR test, and a block reuses at
every step where it is scheduled and has a cached output. With `seed-linear` it gives
the seed's reuse column exactly (`suites/seed-table.yaml`, `dqar-bench plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dqar_bench import StaticGate, hookimpl


@dataclass
class Always(StaticGate):
    """Reuse every eligible block: the scheduler's mask (and what the cache holds) alone decides."""

    PLUGIN_NAME = "always"

    def pattern(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        return torch.ones(num_steps, num_blocks, dtype=torch.bool)


@hookimpl
def register_gates():
    return [Always]
