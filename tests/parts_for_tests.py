"""Parts that only tests register (`load_registry(extra_plugins=(TestParts(),))`): a gate
that spends a known time per sampling call (an injected slowdown) and a cache that gives
back NaN (a broken strategy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.strategies.caches.attention_output import AttentionOutput
from tests import synthetic

SPEND: dict[str, Callable[[float], None]] = {"wait": synthetic.real_wait}
"""How `spin` spends its time: a real busy wait, or a test's virtual clock."""


@dataclass
class Spin(Gate):
    """Never reuse, and spend `seconds` at the start of every sampling call."""

    PLUGIN_NAME = "spin"

    seconds: float = 0.01

    def reset(self, num_steps: int, num_blocks: int) -> None:
        SPEND["wait"](self.seconds)

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        return [False] * len(eligible)


@dataclass
class NanCache(AttentionOutput):
    """The attention-output cache, except that a reuse gives back NaN."""

    PLUGIN_NAME = "nan-cache"

    def reuse(self, block: int, module: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.full_like(super().reuse(block, module, hidden_states), float("nan"))


class TestParts:
    @hookimpl
    def register_gates(self) -> list[type]:
        return [Spin]

    @hookimpl
    def register_caches(self) -> list[type]:
        return [NanCache]


def registry_with_test_parts():
    from dqar_bench.core.plugins import load_registry

    return load_registry(autoload=False, extra_plugins=(TestParts(),))
