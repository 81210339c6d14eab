"""Gate `snr`: reuse only in the middle of the trajectory, where the latent SNR is moderate.

SNR = ||x0_hat||^2 / (||x_t - x0_hat||^2 + eps) from the sampler's predicted clean sample
(`dqar_bench.signals.latent_snr`). Early (low SNR) the layout is still being decided and
features move fast; late (high SNR) the fine detail is drawn and small errors show. In
between, attention changes slowly and reuse is cheapest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.signals import SNR
from strategies.gates.streaks import Streaks


def in_window(snr: float, low: float, high: float) -> bool:
    """low <= snr <= high; NaN (no prediction yet, step 0) is outside."""
    return low <= snr <= high


def check_window(low: float, high: float) -> None:
    if not low >= 0:
        raise ValueError(f"parameter 'snr_low' must be >= 0, got {low}")
    if not high >= low:
        raise ValueError(f"parameter 'snr_high' must be >= snr_low ({low}), got {high}")


@dataclass
class Snr(Gate):
    """Reuse every eligible block while the latent SNR lies inside [snr_low, snr_high]."""

    PLUGIN_NAME = "snr"
    SIGNALS = frozenset({SNR})

    snr_low: float = field(default=0.1, metadata={"help": "lower end of the reuse window"})
    snr_high: float = field(default=10.0, metadata={"help": "upper end of the reuse window"})
    max_reuse: int = field(default=0, metadata={"help": "compute after this many reuse steps in a row (0 = no cap)"})

    _streaks: Streaks = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_window(self.snr_low, self.snr_high)
        self._streaks = Streaks(self.max_reuse)

    def reset(self, num_steps: int, num_blocks: int) -> None:
        self._streaks.reset(num_blocks)

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        inside = in_window(ctx.signals[SNR], self.snr_low, self.snr_high)
        return self._streaks.cap(ctx.step, [inside and e for e in eligible])


@hookimpl
def register_gates():
    return [Snr]
