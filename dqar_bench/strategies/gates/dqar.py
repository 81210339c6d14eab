"""Gate `dqar`: the DQAR seed's decision, entropy and SNR together after a few warmup steps.

A block reuses when its attention is focused (entropy below tau(p), see `entropy`) and
the SNR is inside the window (see `snr`), and never during the first `warmup`
steps, while the cache holds little but the first, noisiest features; blocks in the
deepest third also need SNR >= `deep_layer_snr_threshold` (see `snr`). The defaults are
the seed's window [0.1, 10] (on the schedule's SNR, which the seed's scheduler read), 2
warmup steps and deep-block floor 1.0; tau 0.36 normalised, the seed's 2.0 nats on DiT-XL/2's
256 keys (2.0 / log 256).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.strategy.signals import ENTROPY, SNR
from dqar_bench.strategies.gates.entropy import THRESHOLD_HELP, UNIT_HELP, EntropyUnit, check_entropy_params, entropy_threshold, focused
from dqar_bench.strategies.gates.snr import DEEP_HELP, SOURCE_HELP, SnrSource, check_deep_threshold, check_window, deep_floor, in_window, snr_window
from dqar_bench.strategies.gates.streaks import Streaks


@dataclass
class Dqar(Gate):
    """Reuse where entropy < tau(p) and snr_low <= SNR <= snr_high, after `warmup` steps."""

    PLUGIN_NAME = "dqar"
    SIGNALS = frozenset({ENTROPY, SNR})
    THRESHOLD = "threshold"

    CONFORMANCE_PARAMS = {"threshold": 1.0, "snr_low": 0.0, "snr_high": 1e9, "warmup": 0, "deep_layer_snr_threshold": 0.0}
    """Wide open, for `dqar_bench.testing`: a tiny model's signals are not a trained one's (normalised entropy is at most 1)."""

    threshold: float = field(default=0.36, metadata={"range": (0.05, 1.0), "help": THRESHOLD_HELP})
    snr_low: float = field(default=0.1, metadata={"help": "lower end of the SNR window"})
    snr_high: float = field(default=10.0, metadata={"help": "upper end of the SNR window"})
    entropy: EntropyUnit = field(default="normalised", metadata={"help": UNIT_HELP})
    snr: SnrSource = field(default="schedule", metadata={"help": SOURCE_HELP})
    warmup: int = field(default=2, metadata={"range": (0, 6), "help": "steps from the start with no reuse"})
    adapt_to_length: bool = field(default=False, metadata={"help": "scale tau by sqrt(p / base_length)"})
    base_length: float = field(default=77.0, metadata={"help": "p0 of the adaptation"})
    max_reuse: int = field(default=0, metadata={"range": (0, 4), "help": "compute after this many reuse steps in a row (0 = no cap)"})
    deep_layer_snr_threshold: float = field(default=1.0, metadata={"help": DEEP_HELP})

    _streaks: Streaks = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_entropy_params(self.threshold, self.base_length, self.entropy)
        check_window(self.snr_low, self.snr_high)
        check_deep_threshold(self.deep_layer_snr_threshold)
        if self.warmup < 0:
            raise ValueError(f"parameter 'warmup' must be >= 0, got {self.warmup}")
        self._streaks = Streaks(self.max_reuse)

    def reset(self, num_steps: int, num_blocks: int) -> None:
        self._streaks.reset(num_blocks)

    def window(self, snrs: Sequence[float], num_blocks: int) -> torch.Tensor:
        """No reuse in the warmup steps, nor outside the window on the schedule's SNR (with
        `snr: x0` the SNR is known only during the call: then the warmup alone)."""
        if self.snr != "schedule":
            open_steps = [[step >= self.warmup] * num_blocks for step in range(len(snrs))]
            return torch.tensor(open_steps, dtype=torch.bool).reshape(len(snrs), num_blocks)
        return snr_window(snrs, num_blocks, self.snr_low, self.snr_high, self.deep_layer_snr_threshold, self.warmup)

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        if ctx.step < self.warmup or not in_window(ctx.signals[SNR], self.snr_low, self.snr_high):
            reuse = [False] * len(eligible)
        else:
            tau = entropy_threshold(self.threshold, ctx.cond_len, self.base_length, self.adapt_to_length)
            reuse = [e and f for e, f in zip(eligible, focused(ctx.signals[ENTROPY], tau))]
            reuse = deep_floor(reuse, ctx.signals[SNR], self.deep_layer_snr_threshold)
        return self._streaks.cap(ctx.step, reuse)


@hookimpl
def register_gates():
    return [Dqar]
