"""Gate `warmup-interval`: compute the first steps, then every N-th step (TaylorSeer's cadence).

`schedule: official` (the default) is TaylorSeer's own DiT code (`Shenyi-Z/TaylorSeer`,
`TaylorSeer-DiT/cache_functions/cal_type.py`): the first `first_enhance` (`warmup`, 2)
steps compute in full, then a counter reset at every full step asks for the next one after
N - 1 forecast steps, so with N = 4: steps 0, 1, 5, 9, 13, ...

`schedule: diffusers` is diffusers' `TaylorSeerCacheHook` at the same nominal settings
(`disable_cache_before_step = warmup`, `cache_interval = N`): it computes while
`step < warmup` and where `(step - warmup - 1) % N == 0`, so with N = 4: 0, 1, 3, 7, 11, ...
(one more full step than the official code at 20 steps). Figures quoted against either
implementation can be reproduced with the matching schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from dqar_bench import StaticGate, hookimpl
from dqar_bench.strategies.gates.interval import check_every, step_rows


@dataclass
class WarmupInterval(StaticGate):
    """Compute on the first `warmup` steps, then every N-th step (TaylorSeer's official or diffusers' cadence)."""

    PLUGIN_NAME = "warmup-interval"

    every: int = field(default=4, metadata={"range": (1, 8), "help": "N: full computations every N-th step after the warmup"})
    warmup: int = field(default=2, metadata={"range": (1, 6), "help": "full computations before the cadence starts (>= 1)"})
    schedule: Literal["official", "diffusers"] = field(
        default="official",
        metadata={"help": "official: TaylorSeer's DiT code (0, 1, 5, 9, ... at N = 4); diffusers: its TaylorSeer hook (0, 1, 3, 7, ...)"},
    )

    def __post_init__(self) -> None:
        check_every(self.every)
        if self.warmup < 1:
            raise ValueError(f"parameter 'warmup' must be >= 1 (step 0 has nothing cached), got {self.warmup}")

    def computes(self, step: int) -> bool:
        if step < self.warmup:
            return True
        offset = 1 if self.schedule == "official" else -1
        return (step - self.warmup + offset) % self.every == 0

    def pattern(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        return step_rows([not self.computes(s) for s in range(num_steps)], num_blocks)


@hookimpl
def register_gates():
    return [WarmupInterval]
