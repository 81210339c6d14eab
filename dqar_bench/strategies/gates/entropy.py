"""Gate `entropy`: reuse a block while its self-attention is focused (low entropy).

A block whose attention rows are sharp attends to a few tokens whose features change
slowly between steps, so its output is safe to reuse; diffuse attention mixes everything
and shifts with the latent. The entropy `H = -1/(H*T) sum_h sum_ij A log(A + eps)` comes
from the probe `dqar_bench.strategy.signals.attention_entropy`, taken when the block last computed,
on `probe_queries` sampled query rows. Uniform attention over N keys has entropy log N,
so a useful threshold depends on the token count (log 256 = 5.5 for DiT-XL/2-256).

The threshold can adapt to the conditioning length p: tau(p) = tau * sqrt(p / p0). That
follows the DQAR seed, written for text prompts (p0 = 77 CLIP tokens); a class-conditional
DiT has one conditioning token, so the adaptation is off by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.strategy.signals import ENTROPY
from dqar_bench.strategies.gates.streaks import Streaks


def entropy_threshold(threshold: float, cond_len: int, base_length: float, adapt: bool) -> float:
    """tau(p) = tau * sqrt(p / p0) when adapting, else tau."""
    return threshold * math.sqrt(cond_len / base_length) if adapt else threshold


def focused(entropies: list[float], tau: float) -> list[bool]:
    """Per block, H < tau; a block never measured (NaN) is not focused."""
    return [h < tau for h in entropies]  # NaN < tau is False


def check_entropy_params(threshold: float, base_length: float) -> None:
    if not threshold > 0:
        raise ValueError(f"parameter 'threshold' must be > 0, got {threshold}")
    if not base_length > 0:
        raise ValueError(f"parameter 'base_length' must be > 0, got {base_length}")


@dataclass
class Entropy(Gate):
    """Reuse where the block's attention entropy, measured when it last computed, is below tau(p)."""

    PLUGIN_NAME = "entropy"
    SIGNALS = frozenset({ENTROPY})

    threshold: float = field(default=2.0, metadata={"range": (0.5, 4.0), "help": "tau, in nats (uniform over N keys is log N)"})
    adapt_to_length: bool = field(default=False, metadata={"help": "scale tau by sqrt(p / base_length), p = conditioning tokens"})
    base_length: float = field(default=77.0, metadata={"help": "p0 of the adaptation"})
    max_reuse: int = field(default=0, metadata={"range": (0, 4), "help": "compute after this many reuse steps in a row (0 = no cap)"})

    _streaks: Streaks = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_entropy_params(self.threshold, self.base_length)
        self._streaks = Streaks(self.max_reuse)

    def reset(self, num_steps: int, num_blocks: int) -> None:
        self._streaks.reset(num_blocks)

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        tau = entropy_threshold(self.threshold, ctx.cond_len, self.base_length, self.adapt_to_length)
        reuse = [e and f for e, f in zip(eligible, focused(ctx.signals[ENTROPY], tau))]
        return self._streaks.cap(ctx.step, reuse)


@hookimpl
def register_gates():
    return [Entropy]
