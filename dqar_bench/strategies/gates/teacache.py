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

The official policy travels with the fit (`families.Modulation`: coefficients, `warmup`,
`compute_last`, each citing the script and line it comes from), and `warmup` /
`compute_last` left at None take it:

- FLUX.1-dev: `TeaCache4FLUX/teacache_flux.py` line 113 (fit), lines 109-116 (first and last
  steps compute, reuse while `acc < thresh`); HunyuanVideo likewise
  (`TeaCache4HunyuanVideo/teacache_sample_video.py` lines 98-102).
- Wan 2.1 (`TeaCache4Wan2.1/teacache_generate.py`, ali-vilab/TeaCache at 7c10efc4): the
  retention mode (`use_ret_steps`, the default here) reads `e0`, the blocks' `temb`, with
  the fit of lines 881-883, computes the first 5 steps (`ret_steps = 5*2` calls, line 886)
  and forces no last step (`cutoff_steps = 2n`, line 887). `mode: e` reads `e`, the time
  embedding before its projection (line 520), with the fit of lines 888-890, 1 warm-up step
  and the last step forced (lines 893-894). The reference keeps one accumulator per CFG
  branch (lines 522-550), but both branches see the same `e0` / `e` (they depend on the
  timestep alone), so the conditional pass deciding for both is the same decision.
- CogVideoX (`TeaCache4CogVideoX1.5/teacache_sample_video.py` lines 9-14, picked there by
  checkpoint name): here by the model's structure, CogVideoX1.5's temporal patches
  (`patch_size_t`) -> the 1.5-5B fit, rotary embeddings -> the 5b fit, else the 2b fit.

A family with no published fit (DiT, PixArt, SD3, Sana) refuses the gate unless the case
gives `coefficients` (a fit of its own model, or `[1, 0]` for the raw change): a fit is a
property of one checkpoint, not of the method (`refusal_on`).
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
    THRESHOLD = "threshold"
    UNSUPPORTED = {"cudagraph": "decides inside the forward (at block 0's entry), which no captured graph can hold"}

    CONFORMANCE_PARAMS = {"threshold": 1e9, "warmup": 0, "compute_last": False}
    """Wide open, for `dqar_bench.testing`: a tiny model's modulation changes more than a trained one's."""

    threshold: float = field(default=0.4, metadata={"range": (0.05, 1.0), "help": "rel_l1_thresh: TeaCache4FLUX's 0.25 / 0.4 / 0.6 / 0.8 give 1.5x / 1.8x / 2.0x / 2.25x on FLUX.1-dev; HunyuanVideo 0.1 / 0.15"})
    coefficients: list[float] | None = field(default=None, metadata={"help": "rescale polynomial, highest power first; None: the family's published fit (families.Modulation); a family with none refuses"})
    warmup: int | None = field(default=None, metadata={"range": (0, 6), "help": "leading steps that always compute; None: the official script's for the fit (FLUX, CogVideoX, HunyuanVideo, Wan e: 1; Wan retention: 5)"})
    compute_last: bool | None = field(default=None, metadata={"help": "the last step always computes; None: the official script's for the fit (true, but Wan retention: false)"})
    mode: str | None = field(default=None, metadata={"help": "another official input and fit of the family (Wan: e, the time embedding); None: the default (Wan: the retention mode's e0)"})

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"parameter 'threshold' must be >= 0, got {self.threshold}")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"parameter 'warmup' must be >= 0, got {self.warmup}")
        if self.coefficients is not None and not self.coefficients:
            raise ValueError("parameter 'coefficients' must hold at least one number (or be null for the family's)")
        self._fit: Any = None
        self._accumulated = 0.0

    def modulation(self, family: Any, config: Any = None) -> Any:
        return family.modulation_for(self.mode, config)

    def refusal_on(self, family: Any) -> str | None:
        fit = self.modulation(family)
        if isinstance(fit, str):
            return fit
        if self.coefficients is None and not fit.fitted:
            return (
                f"gate 'teacache': TeaCache publishes no rescale fit for family '{family.name}' (another family's would "
                f"stand in); fit this model's with `dqar-bench calibrate SUITE` and give 'coefficients: calibrated' (or [1, 0] for the raw change)"
            )
        return None

    def bind_family(self, family: Any, config: Any = None) -> None:
        fit = self.modulation(family, config)
        self._fit = fit if not isinstance(fit, str) else None

    @property
    def rescale(self) -> tuple[float, ...]:
        if self.coefficients is not None:
            return tuple(self.coefficients)
        return tuple(self._fit.coefficients) if self._fit is not None else (1.0, 0.0)

    @property
    def policy(self) -> tuple[int, bool]:
        """(warmup, compute_last): the case's, else the official script's for the fit."""
        warmup = self.warmup if self.warmup is not None else (self._fit.warmup if self._fit is not None else 1)
        last = self.compute_last if self.compute_last is not None else (self._fit.compute_last if self._fit is not None else True)
        return warmup, last

    def reset(self, num_steps: int, num_blocks: int) -> None:
        self._accumulated = 0.0

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        warmup, compute_last = self.policy
        forced = ctx.step < warmup or (compute_last and ctx.step == ctx.num_steps - 1)
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
