"""Gate `teacache`: TeaCache's decision, from block 0's timestep-modulated input.

TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
Model"; ali-vilab/TeaCache) skips the whole block stack at a step, adding the residual of
the stack from the last step that computed, while the accumulated, rescaled change of the
first block's modulated input stays below a threshold. Per step, as its FLUX, HunyuanVideo
and CogVideoX scripts do:

- the first `warmup` steps and (with `compute_last`) the last step compute, and the
  accumulator is zeroed;
- otherwise `acc += poly(mean|m_t - m_{t-1}| / mean|m_{t-1}|)`, with `m` the modulated input
  and `poly` the family's fitted polynomial (`coefficients`, highest power first as
  `numpy.poly1d`); the step reuses if `acc < threshold`, else it computes and `acc = 0`;
- `m_{t-1}` is the previous step's input whether that step computed or not.

With the `block-residual` cache a skip reuses every block's stored residual: their sum is
the stack's residual from the last computed step (as a sum of per-block residuals, so equal
up to float rounding, not bit for bit). The strategy measures the change at block 0's entry
(`DECIDES_AFTER_BLOCK = -1`), one host sync per step like the reference's `.item()`.

Where we differ: with CFG as two passes (Wan) the reference keeps one accumulator per
branch; here the conditional pass decides for both (each branch still reuses its own
residual). The Wan reference with `use_ret_steps` computes the first 5 steps and not the
last (`warmup: 5, compute_last: false`); the defaults are the FLUX/HunyuanVideo scripts'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.strategy.signals import MODULATION_CHANGE


def polynomial(coefficients: list[float] | tuple[float, ...], x: float) -> float:
    """`numpy.poly1d(coefficients)(x)`: highest power first (Horner)."""
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


@dataclass
class TeaCache(Gate):
    """Skip every block (reuse their residuals) while block 0's rescaled, accumulated input change stays under a threshold."""

    PLUGIN_NAME = "teacache"
    SIGNALS = frozenset({MODULATION_CHANGE})
    DECIDES_AFTER_BLOCK = -1
    UNSUPPORTED = {"cudagraph": "decides inside the forward (at block 0's entry), which no captured graph can hold"}

    threshold: float = field(default=0.4, metadata={"range": (0.05, 1.0), "help": "rel_l1_thresh: TeaCache4FLUX's 0.25 / 0.4 / 0.6 / 0.8 give 1.5x / 1.8x / 2.0x / 2.25x on FLUX.1-dev; HunyuanVideo 0.1 / 0.15"})
    coefficients: list[float] | None = field(default=None, metadata={"help": "rescale polynomial, highest power first; None: the family's published fit (families.Modulation), [1, 0] where none is"})
    warmup: int = field(default=1, metadata={"range": (0, 6), "help": "leading steps that always compute (the reference: 1; Wan with use_ret_steps: 5)"})
    compute_last: bool = field(default=True, metadata={"help": "the last step always computes (the FLUX, HunyuanVideo and CogVideoX scripts)"})

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"parameter 'threshold' must be >= 0, got {self.threshold}")
        if self.warmup < 0:
            raise ValueError(f"parameter 'warmup' must be >= 0, got {self.warmup}")
        if self.coefficients is not None and not self.coefficients:
            raise ValueError("parameter 'coefficients' must hold at least one number (or be null for the family's)")
        self._family: tuple[float, ...] = (1.0, 0.0)
        self._accumulated = 0.0

    def bind_family(self, family: Any) -> None:
        coefficients = getattr(getattr(family, "modulation", None), "coefficients", None)
        self._family = tuple(coefficients) if coefficients else (1.0, 0.0)

    @property
    def rescale(self) -> tuple[float, ...]:
        return tuple(self.coefficients) if self.coefficients is not None else self._family

    def reset(self, num_steps: int, num_blocks: int) -> None:
        self._accumulated = 0.0

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        forced = ctx.step < self.warmup or (self.compute_last and ctx.step == ctx.num_steps - 1)
        change = ctx.signals[MODULATION_CHANGE]
        if forced or change == float("inf"):
            self._accumulated = 0.0
            return [False] * len(eligible)
        self._accumulated += polynomial(self.rescale, change)
        if self._accumulated < self.threshold:
            return list(eligible)
        self._accumulated = 0.0
        return [False] * len(eligible)


@hookimpl
def register_gates():
    return [TeaCache]
