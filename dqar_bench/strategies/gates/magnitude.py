"""Gate `magnitude`: MagCache's decision, from the magnitude ratios of the stack's residuals.

MagCache (Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache";
Zehong-Ma/MagCache, read at commit df81cb18) measures once, per model, how the norm of the
whole block stack's residual changes from step to step (`mag_ratios`: mean over tokens of
||r_t|| / ||r_{t-1}||; prompt-independent, so calibrated once). A step skips the stack,
adding the last computed residual, while the error accumulated since the last computed
step stays small: after the retained first steps,

    acc_ratio *= mag_ratios[t];  acc_steps += 1;  acc_err += |1 - acc_ratio|
    skip if acc_err <= threshold and acc_steps <= K and t is not protected,
    else compute and reset all three.

That depends on the step alone, so it is a static gate: `dqar-bench plan` gives its reuse
exactly. Ratios of another step count are resampled by nearest index, as the reference's
`nearest_interp`. With the `block-residual` cache a skip adds every block's stored residual
(their sum is the stack's, up to float rounding).

The official policies, each a setting of this gate:

- FLUX.1-dev (the defaults): `MagCache4FLUX/magcache_flux.py` lines 459-468 (28 ratios,
  K = 5, threshold 0.24, retention 0.1; retained steps `int(r * n + 0.5)`, line 327) and
  line 332, which never skips the step that maps to index 11 of 28
  (`round(t * 27 / (n - 1)) != 11`): `protected_steps: [11]` at `protected_of: 28`.
- Wan 2.1 (two CFG passes per step): `MagCache4Wan2.1/magcache_generate.py` lines 277-292
  keep one accumulator per branch (`cnt % 2`) over ratios interleaved per call (lines
  909-919: `[1.0]*2 + [c1, u1, c2, u2, ...]`, resampled per branch), skip at
  `acc_err < threshold` (strict) and retain the first `int(2n * r)` calls (line 279);
  argparse defaults threshold 0.12, K = 2, retention 0.2 (lines 746-759). Here:
  `mag_ratios: [[cond...], [uncond...]]` (one list per branch), `strict: true`,
  `protected_steps: []`; the retained calls are counted as the reference counts them.
- diffusers' `MagCacheConfig` (hooks/mag_cache.py lines 110-112, 208-218): threshold 0.06,
  K = 3, retention 0.2, `<=`, no protected step, one accumulator for every call.

Ratios of another model come from a calibration run of the untouched model:
`magnitude_ratios` below (per branch with `branches=2`, as the Wan script's calibration).
A gate left at FLUX.1-dev's ratios refuses any other family (`refusal_on`): those ratios
are that checkpoint's, not a property of the method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from dqar_bench import StaticGate, StepContext, hookimpl

FLUX_MAG_RATIOS: tuple[float, ...] = (
    1.0, 1.21094, 1.11719, 1.07812, 1.0625, 1.03906, 1.03125, 1.03906, 1.02344, 1.03125, 1.02344, 0.98047, 1.01562,
    1.00781, 1.0, 1.00781, 1.0, 1.00781, 1.0, 1.0, 0.99609, 0.99609, 0.98047, 0.98828, 0.96484, 0.95703, 0.93359, 0.89062,
)
"""MagCache4FLUX's 28-step ratios for FLUX.1-dev (the reference script; diffusers' `FLUX_MAG_RATIOS`)."""


def nearest_interp(ratios: list[float] | tuple[float, ...], steps: int) -> list[float]:
    """The reference's resampling: index round(i * (n - 1) / (steps - 1)) (numpy's round: half to even)."""
    if steps == 1:
        return [ratios[-1]]
    scale = (len(ratios) - 1) / (steps - 1)
    return [ratios[int(torch.round(torch.tensor(i * scale, dtype=torch.float64)).item())] for i in range(steps)]


PROTECTED_OF = 28
"""The step count of the FLUX script's protected index (its line 332: `(28 - 1) / (num_steps - 1)`)."""


def _round_half_even(x: float) -> int:
    """numpy's `np.round` on a float64 (half to even), as the reference rounds step indices."""
    return int(torch.round(torch.tensor(x, dtype=torch.float64)).item())


@dataclass
class Magnitude(StaticGate):
    """Skip the block stack while the accumulated magnitude-ratio error stays under a threshold (MagCache)."""

    PLUGIN_NAME = "magnitude"
    THRESHOLD = "threshold"

    threshold: float = field(default=0.24, metadata={"range": (0.01, 0.5), "help": "accumulated error |1 - prod ratios| up to which steps skip (reference FLUX: 0.24; Wan: 0.12; diffusers: 0.06)"})
    max_skip_steps: int = field(default=5, metadata={"range": (1, 6), "help": "K: most steps skipped in a row (reference FLUX: 5; Wan: 2; diffusers: 3)"})
    retention_ratio: float = field(default=0.1, metadata={"help": "share of the first steps that always compute (reference FLUX: 0.1; Wan and diffusers: 0.2)"})
    mag_ratios: list[float] | list[list[float]] | Literal["flux"] | None = field(default=None, metadata={"help": "per-step residual magnitude ratios of the model, or one list per CFG branch [cond, uncond]; flux: FLUX.1-dev's published 28 on any family; None: those on FLUX only (another family refuses); resampled to the step count"})
    protected_steps: list[int] = field(default_factory=lambda: [11], metadata={"help": "steps never skipped, as indices of a `protected_of`-step schedule (reference FLUX: [11] of 28; Wan and diffusers: [])"})
    protected_of: int = field(default=PROTECTED_OF, metadata={"help": "the step count `protected_steps` are indices of (reference FLUX: 28)"})
    strict: bool = field(default=False, metadata={"help": "skip only while the error is < threshold (the Wan script) instead of <= (FLUX script, diffusers)"})

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"parameter 'threshold' must be >= 0, got {self.threshold}")
        if self.max_skip_steps < 0:
            raise ValueError(f"parameter 'max_skip_steps' must be >= 0, got {self.max_skip_steps}")
        if not 0.0 <= self.retention_ratio <= 1.0:
            raise ValueError(f"parameter 'retention_ratio' must be in [0, 1], got {self.retention_ratio}")
        if self.protected_of < 2:
            raise ValueError(f"parameter 'protected_of' must be >= 2 (a step count), got {self.protected_of}")
        if self.mag_ratios not in (None, "flux"):
            lists = self.branch_ratios
            if not lists or any(not r for r in lists) or len(lists) > 2:
                raise ValueError(
                    "parameter 'mag_ratios' must be a list of numbers, or two non-empty lists [cond, uncond] "
                    "(or null for FLUX.1-dev's)"
                )

    @property
    def branch_ratios(self) -> list[list[float]]:
        """The ratios per CFG branch: one list, or [cond, uncond]."""
        ratios = list(FLUX_MAG_RATIOS) if self.mag_ratios in (None, "flux") else self.mag_ratios
        if all(isinstance(r, list) for r in ratios):
            return [list(map(float, r)) for r in ratios]  # type: ignore[arg-type]
        return [list(map(float, ratios))]  # type: ignore[arg-type]

    def refusal_on(self, family: Any) -> str | None:
        if self.mag_ratios is None and getattr(family, "name", "flux") != "flux":
            return (
                "gate 'magnitude' without 'mag_ratios' uses FLUX.1-dev's published ratios, another family's fit; "
                "calibrate this model (`dqar-bench calibrate SUITE`) and give 'mag_ratios: calibrated' "
                "(or 'mag_ratios: flux' to run FLUX's anyway)"
            )
        return None

    def _protected(self, num_steps: int) -> set[int]:
        if not self.protected_steps:
            return set()
        scale = (self.protected_of - 1) / max(num_steps - 1, 1)
        return {t for t in range(num_steps) if _round_half_even(t * scale) in self.protected_steps}

    def branch_skips(self, num_steps: int) -> list[list[bool]]:
        """Per branch, per step: skip? One branch, or two with their own ratios and accumulators."""
        lists = self.branch_ratios
        branches = len(lists)
        if branches == 1:
            retained = lambda t, b: t < int(self.retention_ratio * num_steps + 0.5)  # noqa: E731 (FLUX line 327)
        else:
            calls = int(2 * num_steps * self.retention_ratio)  # Wan line 279, over the 2n calls
            retained = lambda t, b: 2 * t + b < calls  # noqa: E731
        protected = self._protected(num_steps)
        out = []
        for b, ratios in enumerate(lists):
            ratios = nearest_interp(ratios, num_steps)
            ratio, steps, err = 1.0, 0, 0.0
            skips = []
            for t in range(num_steps):
                skip = False
                if not retained(t, b):
                    ratio *= ratios[t]
                    steps += 1
                    err += abs(1.0 - ratio)
                    small = err < self.threshold if self.strict else err <= self.threshold
                    if small and steps <= self.max_skip_steps and t not in protected:
                        skip = True
                    else:
                        ratio, steps, err = 1.0, 0, 0.0
                skips.append(skip)
            out.append(skips)
        return out

    def skips(self, num_steps: int) -> list[bool]:
        """The conditional (or only) branch's skipped steps."""
        return self.branch_skips(num_steps)[0]

    def pattern(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        return torch.tensor(self.skips(num_steps), dtype=torch.bool).reshape(-1, 1).expand(num_steps, num_blocks).clone()

    def decide_branches(self, ctx: StepContext, eligible: list[bool], branches: int) -> list[list[bool]]:
        """With one ratio list per branch, each branch skips on its own (the Wan script)."""
        skips = self.branch_skips(ctx.num_steps)
        if len(skips) == 1 or branches == 1:
            return [self.decide(ctx, eligible)] * branches
        return [[s[ctx.step] and e for e in eligible] for s in skips[:branches]]


@torch.no_grad()
def magnitude_ratios(transformer: torch.nn.Module, run: Any, branches: int = 1) -> list[float] | list[list[float]]:
    """MagCache's calibration: the per-step ratio of the stack residual's token norms, mean over tokens.

    `run()` runs one sampling call of the untouched `transformer` (`branches` forwards per
    step: 2 where CFG runs as two passes). The residual is the image stream's output of the
    last block minus its input at block 0, as the reference's `magcache_calibration`, and
    each call's is divided by the previous one of its own branch (the Wan script's
    `residual_cache[cnt % 2]`, lines 166-175); a branch's first ratio is 1.0. With two
    branches the answer is [cond, uncond], the form the gate's `mag_ratios` takes.
    """
    from dqar_bench.model.families import family_of

    family = family_of(transformer)
    lists = family.block_lists(transformer)
    first, (last_spec, last_blocks) = lists[0][1][0], lists[-1]
    position = last_spec.returns.index("hidden_states")
    inputs: list[torch.Tensor] = []
    ratios: list[list[float]] = [[] for _ in range(branches)]
    previous: list[torch.Tensor | None] = [None] * branches
    calls = [0]

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inputs.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

    def after(module: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        image = out[position] if isinstance(out, tuple) else out
        residual = (image - inputs.pop()).float()
        branch = calls[0] % branches
        calls[0] += 1
        held = previous[branch]
        ratios[branch].append(1.0 if held is None else float((residual.norm(dim=-1) / held.norm(dim=-1)).mean()))
        previous[branch] = residual

    handles = [first.register_forward_pre_hook(before, with_kwargs=True), last_blocks[-1].register_forward_hook(after, with_kwargs=True)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    rounded = [[round(r, 5) for r in each] for each in ratios]
    return rounded[0] if branches == 1 else rounded


@hookimpl
def register_gates():
    return [Magnitude]
