"""Scheduler `timestep-window`: reuse only while the timestep is inside a window (PAB).

Pyramid Attention Broadcast broadcasts attention only in the middle of sampling: early
steps shape the image and late ones its details, so both compute. Its diffusers hook
skips while `low < t < high` with (100, 800) as the default for spatial attention; that is
the default here, on the sampler's own timesteps (so it follows DDIM and DPM-Solver
spacing alike). Asked for a mask outside a sampling call, it assumes DDIM's "leading"
spacing over `num_train_timesteps`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dqar_bench import Scheduler, hookimpl


def leading_timesteps(num_steps: int, num_train_timesteps: int) -> list[int]:
    """DDIM's default spacing: (n - 1 - i) * (T // n) for i in 0..n-1."""
    ratio = num_train_timesteps // num_steps
    return [(num_steps - 1 - i) * ratio for i in range(num_steps)]


@dataclass
class TimestepWindow(Scheduler):
    """Every block may reuse while low < t < high (PAB's broadcast range); none outside."""

    PLUGIN_NAME = "timestep-window"

    low: int = field(default=100, metadata={"help": "reuse only above this timestep (exclusive; -1 lets t = 0 reuse, as FasterCache's (-1, 681))"})
    high: int = field(default=800, metadata={"help": "reuse only below this timestep (exclusive)"})
    num_train_timesteps: int = field(default=1000, metadata={"help": "for the assumed spacing when no sampler timesteps are known"})

    def __post_init__(self) -> None:
        if not -1 <= self.low < self.high:
            raise ValueError(f"parameters 'low' and 'high' must satisfy -1 <= low < high, got {self.low} and {self.high}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"parameter 'num_train_timesteps' must be >= 1, got {self.num_train_timesteps}")

    def mask(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        timesteps = self.timesteps if self.timesteps is not None else leading_timesteps(num_steps, self.num_train_timesteps)
        inside = torch.tensor([self.low < t < self.high for t in timesteps], dtype=torch.bool)
        return inside.unsqueeze(1).expand(num_steps, num_blocks).clone()


@hookimpl
def register_schedulers():
    return [TimestepWindow]
