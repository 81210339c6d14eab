"""Gate `snr`: reuse only in the middle of the trajectory, where the SNR is moderate.

`snr: schedule` (the default) reads the noise schedule's SNR at the step: `alpha_bar /
(1 - alpha_bar)` for epsilon and v-prediction, `((1 - sigma) / sigma)^2` for flow matching
(`dqar_bench.strategy.signals.schedule_snr`), so equal noise gives equal SNR on every
family. `snr: x0` reads the estimate the DQAR seed's code computes from the sampler's
predicted clean sample, `||x0_hat||^2 / (||x_t - x0_hat||^2 + eps)`
(`dqar_bench.strategy.signals.latent_snr`); it tracks the model's prediction, not the
noise level (on flow models it reads 0.44 at sigma 0.98 where the schedule's is 0.0005).
Early (low SNR) the layout is still being decided and features move fast; late (high
SNR) the fine detail is drawn and small errors show. In between, attention changes
slowly and reuse is cheapest.

`deep_layer_snr_threshold` is the DQAR seed's extra rule for deep blocks (its
`LayerScheduler.can_reuse`, `SchedulerConfig.deep_layer_snr_threshold`, default 1.0): a
block in the deepest third (index >= 2L // 3 of L blocks) reuses only while the SNR is at
least that high, because deep blocks draw detail and stay unstable longer. The seed's
scheduler takes that SNR from the noise schedule (alpha_bar / (1 - alpha_bar)), as this
gate does by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.strategy.signals import SNR
from dqar_bench.strategies.gates.streaks import Streaks


def in_window(snr: float, low: float, high: float) -> bool:
    """low <= snr <= high; NaN (no prediction yet, step 0) is outside."""
    return low <= snr <= high


def deep_floor(reuse: list[bool], snr: float, threshold: float) -> list[bool]:
    """`reuse`, minus the deepest third of the blocks (index >= 2L // 3) unless SNR >= threshold."""
    first_deep = 2 * len(reuse) // 3
    deep_ok = snr >= threshold  # NaN (no prediction yet) is below any floor
    return [r and (b < first_deep or deep_ok) for b, r in enumerate(reuse)]


def snr_window(
    snrs: Sequence[float], num_blocks: int, low: float, high: float, deep_threshold: float, first_step: int = 0
) -> torch.Tensor:
    """The steps and blocks where an SNR gate on the schedule's SNR can reuse (`Gate.window`):
    from `first_step` on, while `snrs[step]` is inside [low, high], deep blocks only above
    their floor; `in_window` and `deep_floor` decide it, as they decide `decide`'s answers."""
    rows = [
        deep_floor([step >= first_step and in_window(snr, low, high)] * num_blocks, snr, deep_threshold)
        for step, snr in enumerate(snrs)
    ]
    return torch.tensor(rows, dtype=torch.bool).reshape(len(snrs), num_blocks)


def check_deep_threshold(threshold: float) -> None:
    if not threshold >= 0:
        raise ValueError(f"parameter 'deep_layer_snr_threshold' must be >= 0 (0 = off), got {threshold}")


DEEP_HELP = "blocks in the deepest third (index >= 2L // 3) reuse only while SNR >= this (the seed's rule; 0 = off)"


SnrSource = Literal["schedule", "x0"]
SOURCE_HELP = "schedule: the noise schedule's SNR at the step (the default); x0: the seed's estimate from predicted x0"


def check_window(low: float, high: float) -> None:
    if not low >= 0:
        raise ValueError(f"parameter 'snr_low' must be >= 0, got {low}")
    if not high >= low:
        raise ValueError(f"parameter 'snr_high' must be >= snr_low ({low}), got {high}")


@dataclass
class Snr(Gate):
    """Reuse every eligible block while the SNR lies inside [snr_low, snr_high]."""

    PLUGIN_NAME = "snr"
    SIGNALS = frozenset({SNR})
    THRESHOLD = "snr_high"
    """The window opens upward from snr_low as it rises: the SNR grows step by step, so later steps join."""

    snr_low: float = field(default=0.1, metadata={"help": "lower end of the reuse window"})
    snr_high: float = field(default=10.0, metadata={"help": "upper end of the reuse window"})
    snr: SnrSource = field(default="schedule", metadata={"help": SOURCE_HELP})
    max_reuse: int = field(default=0, metadata={"help": "compute after this many reuse steps in a row (0 = no cap)"})
    deep_layer_snr_threshold: float = field(default=1.0, metadata={"help": DEEP_HELP})

    _streaks: Streaks = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_window(self.snr_low, self.snr_high)
        check_deep_threshold(self.deep_layer_snr_threshold)
        self._streaks = Streaks(self.max_reuse)

    def reset(self, num_steps: int, num_blocks: int) -> None:
        self._streaks.reset(num_blocks)

    def window(self, snrs: Sequence[float], num_blocks: int) -> torch.Tensor | None:
        """Outside the window on the schedule's SNR it never reuses (an x0 SNR is known only during the call)."""
        if self.snr != "schedule":
            return None
        return snr_window(snrs, num_blocks, self.snr_low, self.snr_high, self.deep_layer_snr_threshold)

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        snr = ctx.signals[SNR]
        inside = in_window(snr, self.snr_low, self.snr_high)
        reuse = deep_floor([inside and e for e in eligible], snr, self.deep_layer_snr_threshold)
        return self._streaks.cap(ctx.step, reuse)


@hookimpl
def register_gates():
    return [Snr]
