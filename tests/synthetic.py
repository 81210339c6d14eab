"""A DiT-shaped model whose blocks cost a known, fixed time: the timer checked by arithmetic.

Each block spends `attention_s` in its self-attention (`attn1`, which the harness can skip)
and `mlp_s` in the rest, so the time of a sampling call is known in advance: with S steps,
B blocks and attention computed on A of the steps, it is B * (A * attention_s + S * mlp_s).
The cost is either real (sleep, then spin to a perf_counter deadline, so it is precise
and mostly idle) or virtual (a `VirtualClock` is advanced, and the harness's clock is
swapped for it: exact arithmetic, no dependence on a busy machine). `scale` multiplies
every cost (an injected slowdown); `jitter` adds seeded noise to each call.
"""

from __future__ import annotations

import math
import random
import time
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn

from dqar_bench.model.loaded import DIT_SCHEDULER_CONFIG, LoadedModel


class VirtualClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def real_wait(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    if seconds > 0.002:
        time.sleep(seconds - 0.0015)
    while time.perf_counter() < deadline:
        pass


class _Attention(nn.Module):
    def __init__(self, cost: Callable[[], None]) -> None:
        super().__init__()
        self._cost = cost

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._cost()
        return hidden_states * 0.1


class _Block(nn.Module):
    def __init__(self, attention: Callable[[], None], mlp: Callable[[], None]) -> None:
        super().__init__()
        self.attn1 = _Attention(attention)
        self._mlp = mlp

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn1(hidden_states)
        self._mlp()
        return hidden_states


class FixedCostTransformer(nn.Module):
    """Takes and gives what DiTTransformer2DModel does; its blocks only cost time."""

    dqar_family = "dit"  # its family entry (dqar_bench.model.families): DiT's block layout

    def __init__(
        self,
        blocks: int = 2,
        attention_s: float = 0.01,
        mlp_s: float = 0.005,
        clock: VirtualClock | None = None,
        scale: float = 1.0,
        jitter: float = 0.0,
        seed: int = 0,
        channels: int = 4,
        size: int = 4,
        classes: int = 10,
    ) -> None:
        super().__init__()
        self.config = SimpleNamespace(in_channels=channels, out_channels=2 * channels, sample_size=size, num_embeds_ada_norm=classes)
        self.anchor = nn.Parameter(torch.zeros(()))  # device and dtype, as the sampler reads them
        self.attention_s, self.mlp_s, self.scale, self.jitter = attention_s, mlp_s, scale, jitter
        self._wait = clock.advance if clock is not None else real_wait
        self._rng = random.Random(seed)
        self._noise = 1.0
        self.transformer_blocks = nn.ModuleList(
            _Block(lambda: self._spend(self.attention_s), lambda: self._spend(self.mlp_s)) for _ in range(blocks)
        )

    def _spend(self, seconds: float) -> None:
        self._wait(seconds * self.scale * self._noise)

    def forward(self, hidden_states: torch.Tensor, timestep: Any = None, class_labels: Any = None, **kwargs: Any) -> SimpleNamespace:
        if self.jitter:
            self._noise = 1.0 + self.jitter * self._rng.gauss(0.0, 1.0)
        b, c, h, w = hidden_states.shape
        tokens = hidden_states.flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        out = tokens.transpose(1, 2).reshape(b, c, h, w) * 0.01
        return SimpleNamespace(sample=torch.cat([out, out], dim=1))


def build(**kwargs: Any) -> LoadedModel:
    """A LoadedModel around a `FixedCostTransformer(**kwargs)`."""
    return LoadedModel("synthetic-fixed-cost", FixedCostTransformer(**kwargs).eval(), dict(DIT_SCHEDULER_CONFIG))


def expected_call_s(steps: int, blocks: int, attention_s: float, mlp_s: float, attention_every: int = 1, scale: float = 1.0) -> float:
    """Seconds of one sampling call when attention is computed every `attention_every` steps."""
    computed = math.ceil(steps / attention_every)
    return scale * blocks * (computed * attention_s + steps * mlp_s)
