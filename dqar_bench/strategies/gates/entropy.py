"""Gate `entropy`: reuse a block while its self-attention is focused (low entropy).

A block whose attention rows are sharp attends to a few tokens whose features change
slowly between steps, so its output is safe to reuse; diffuse attention mixes everything
and shifts with the latent. The entropy `H = -1/(H*T) sum_h sum_ij A log A` is that of the
attention the block computes (its processor's own q and k, after norms and rotary
embeddings, over every key it attends to: text and image on joint attention), taken when
the block last computed, on `probe_queries` sampled query rows
(`dqar_bench.strategy.signals.EntropyProbe`).

`entropy: normalised` (the default) reads `H / log(N_keys)` in [0, 1]: 1 is uniform
attention, 0 attention on one key, so one threshold holds across blocks that attend over
different numbers of keys, resolutions and models. `entropy: nats` reads H as the DQAR
seed did; uniform attention over N keys is then log N (5.5 for DiT-XL/2-256's 256
tokens), so a seed threshold t in nats is t / log(N) normalised.

The threshold can adapt to the conditioning length p: tau(p) = tau * sqrt(p / p0). That
follows the DQAR seed, written for text prompts (p0 = 77 CLIP tokens); a class-conditional
DiT has one conditioning token, so the adaptation is off by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.strategy.signals import ENTROPY
from dqar_bench.strategies.gates.streaks import Streaks


def entropy_threshold(threshold: float, cond_len: int, base_length: float, adapt: bool) -> float:
    """tau(p) = tau * sqrt(p / p0) when adapting, else tau."""
    return threshold * math.sqrt(cond_len / base_length) if adapt else threshold


def focused(entropies: list[float], tau: float) -> list[bool]:
    """Per block, H < tau; a block never measured (NaN) is not focused."""
    return [h < tau for h in entropies]  # NaN < tau is False


EntropyUnit = Literal["normalised", "nats"]
UNIT_HELP = "normalised: H / log(N_keys) in [0, 1] (the default); nats: the seed's scale"
THRESHOLD_HELP = "tau: normalised in (0, 1]; in nats (uniform over N keys is log N) with entropy: nats"


def check_entropy_params(threshold: float, base_length: float, unit: str = "normalised") -> None:
    if not threshold > 0:
        raise ValueError(f"parameter 'threshold' must be > 0, got {threshold}")
    if unit == "normalised" and threshold > 1:
        raise ValueError(
            f"parameter 'threshold' must be in (0, 1] for normalised entropy (H / log N_keys), got {threshold}; "
            "a threshold in nats needs 'entropy: nats'"
        )
    if not base_length > 0:
        raise ValueError(f"parameter 'base_length' must be > 0, got {base_length}")


@dataclass
class Entropy(Gate):
    """Reuse where the block's attention entropy, measured when it last computed, is below tau(p)."""

    PLUGIN_NAME = "entropy"
    SIGNALS = frozenset({ENTROPY})
    THRESHOLD = "threshold"

    CONFORMANCE_PARAMS = {"threshold": 1.0}
    """Wide open, for `dqar_bench.testing`: a tiny model's signals are not a trained one's (normalised entropy is at most 1)."""

    threshold: float = field(default=0.36, metadata={"range": (0.05, 1.0), "help": THRESHOLD_HELP})
    entropy: EntropyUnit = field(default="normalised", metadata={"help": UNIT_HELP})
    adapt_to_length: bool = field(default=False, metadata={"help": "scale tau by sqrt(p / base_length), p = conditioning tokens"})
    base_length: float = field(default=77.0, metadata={"help": "p0 of the adaptation"})
    max_reuse: int = field(default=0, metadata={"range": (0, 4), "help": "compute after this many reuse steps in a row (0 = no cap)"})

    _streaks: Streaks = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_entropy_params(self.threshold, self.base_length, self.entropy)
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
