"""Gate `magnitude`: MagCache's decision, from the magnitude ratios of the stack's residuals.

MagCache (Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache";
Zehong-Ma/MagCache) measures once, per model, how the norm of the whole block stack's
residual changes from step to step (`mag_ratios`: mean over tokens of
||r_t|| / ||r_{t-1}||; prompt-independent, so calibrated once). A step skips the stack,
adding the last computed residual, while the error accumulated since the last computed
step stays small: after `retention_ratio` of the steps (rounded half up),

    acc_ratio *= mag_ratios[t];  acc_steps += 1;  acc_err += |1 - acc_ratio|
    skip if acc_err <= threshold and acc_steps <= K, else compute and reset all three.

That depends on the step alone, so it is a static gate: `dqar-bench plan` gives its reuse
exactly. Ratios of another step count are resampled by nearest index, as the reference's
`nearest_interp`. With the `block-residual` cache a skip adds every block's stored residual
(their sum is the stack's, up to float rounding).

Defaults are the reference's FLUX.1-dev script (threshold 0.24, K = 5, retention 0.1, its
28-step ratios, which diffusers ships as `FLUX_MAG_RATIOS`); diffusers' `MagCacheConfig`
defaults to 0.06, 3 and 0.2. Ratios of another model come from a calibration run of the
untouched model: `magnitude_ratios` below. Not reproduced: the FLUX script's extra rule
that never skips its step 11 of 28, and (Wan) separate ratios per guidance branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dqar_bench import StaticGate, hookimpl

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


@dataclass
class Magnitude(StaticGate):
    """Skip the block stack while the accumulated magnitude-ratio error stays under a threshold (MagCache)."""

    PLUGIN_NAME = "magnitude"

    threshold: float = field(default=0.24, metadata={"range": (0.01, 0.5), "help": "accumulated error |1 - prod ratios| up to which steps skip (reference FLUX: 0.24; diffusers: 0.06)"})
    max_skip_steps: int = field(default=5, metadata={"range": (1, 6), "help": "K: most steps skipped in a row (reference FLUX: 5; diffusers: 3)"})
    retention_ratio: float = field(default=0.1, metadata={"help": "share of the first steps that always compute (reference FLUX: 0.1; diffusers: 0.2)"})
    mag_ratios: list[float] | None = field(default=None, metadata={"help": "per-step residual magnitude ratios of the model (None: FLUX.1-dev's published 28); resampled to the step count"})

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"parameter 'threshold' must be >= 0, got {self.threshold}")
        if self.max_skip_steps < 0:
            raise ValueError(f"parameter 'max_skip_steps' must be >= 0, got {self.max_skip_steps}")
        if not 0.0 <= self.retention_ratio <= 1.0:
            raise ValueError(f"parameter 'retention_ratio' must be in [0, 1], got {self.retention_ratio}")
        if self.mag_ratios is not None and not self.mag_ratios:
            raise ValueError("parameter 'mag_ratios' must hold at least one ratio (or be null for FLUX's)")

    def skips(self, num_steps: int) -> list[bool]:
        ratios = nearest_interp(self.mag_ratios or FLUX_MAG_RATIOS, num_steps)
        retention = int(self.retention_ratio * num_steps + 0.5)
        ratio, steps, err = 1.0, 0, 0.0
        out = []
        for t in range(num_steps):
            skip = False
            if t >= retention:
                ratio *= ratios[t]
                steps += 1
                err += abs(1.0 - ratio)
                if err <= self.threshold and steps <= self.max_skip_steps:
                    skip = True
                else:
                    ratio, steps, err = 1.0, 0, 0.0
            out.append(skip)
        return out

    def pattern(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        return torch.tensor(self.skips(num_steps), dtype=torch.bool).reshape(-1, 1).expand(num_steps, num_blocks).clone()


@torch.no_grad()
def magnitude_ratios(transformer: torch.nn.Module, run: Any) -> list[float]:
    """MagCache's calibration: the per-step ratio of the stack residual's token norms, mean over tokens.

    `run()` runs one sampling call of the untouched `transformer` (one forward per step).
    The residual is the image stream's output of the last block minus its input at block 0,
    as the reference's `magcache_calibration`; the first step's ratio is 1.0.
    """
    from dqar_bench.model.families import family_of

    family = family_of(transformer)
    lists = family.block_lists(transformer)
    first, (last_spec, last_blocks) = lists[0][1][0], lists[-1]
    position = last_spec.returns.index("hidden_states")
    inputs: list[torch.Tensor] = []
    ratios: list[float] = []
    previous: list[torch.Tensor | None] = [None]

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inputs.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

    def after(module: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        image = out[position] if isinstance(out, tuple) else out
        residual = (image - inputs.pop()).float()
        if previous[0] is None:
            ratios.append(1.0)
        else:
            ratios.append(float((residual.norm(dim=-1) / previous[0].norm(dim=-1)).mean()))
        previous[0] = residual

    handles = [first.register_forward_pre_hook(before, with_kwargs=True), last_blocks[-1].register_forward_hook(after, with_kwargs=True)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return [round(r, 5) for r in ratios]


@hookimpl
def register_gates():
    return [Magnitude]
