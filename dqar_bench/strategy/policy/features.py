"""What a reuse policy sees: one feature row per block, computed from the step's signals.

The same function builds the rows that `dqar-bench trace` writes and the rows the
`policy` gate decides on, so a trained policy can never see features computed another way.
The rows come from host floats the strategy already gathered (one transfer per step), so
building them costs no device synchronisation.

The features, in order (a policy file records them and is refused if they differ):

- `entropy`: the block's attention entropy (nats), measured when it last computed.
- `log_snr`: natural log of the latent SNR `||x0||^2 / ||x_t - x0||^2` (clamped at 1e-12).
  The SNR spans orders of magnitude over a sampling call; its log is what an MLP can use.
- `latent_rms`: `||x_t||_2 / sqrt(numel)`; the norm divided by the root of the element
  count, so that the batch size does not move the feature.
- `t`: the timestep divided by the 1000 training timesteps of DiT's schedule, in [0, 1);
  it is the noise level, the same for any number of sampling steps.
- `block`: the block index divided by (number of blocks - 1), in [0, 1].

A feature that cannot be measured yet (the SNR before any x0 exists) is NaN; the model
maps it to the training mean.
"""

from __future__ import annotations

import math

import torch

from dqar_bench.core.context import StepContext
from dqar_bench.strategy import signals

FEATURES: tuple[str, ...] = ("entropy", "log_snr", "latent_rms", "t", "block")
SIGNALS: frozenset[str] = frozenset({signals.ENTROPY, signals.SNR, signals.LATENT_NORM})
SNR_SOURCE, ENTROPY_UNIT = "x0", "nats"
"""The signals' forms the shipped policies were traced on (the seed's): a gate or tracer
reading these features sets its `snr` and `entropy` to them (`signals.snr_source`)."""
NUM_TRAIN_TIMESTEPS = 1000
MIN_SNR = 1e-12


def feature_rows(ctx: StepContext, num_blocks: int) -> torch.Tensor:
    """Features of every block at this step, as a float32 CPU tensor [num_blocks, len(FEATURES)]."""
    nan = float("nan")
    values = ctx.signals
    entropy = list(values.get(signals.ENTROPY) or [nan] * num_blocks)
    if len(entropy) != num_blocks:
        raise ValueError(f"entropy signal has {len(entropy)} values for {num_blocks} blocks")
    snr = float(values.get(signals.SNR, nan))
    log_snr = math.log(max(snr, MIN_SNR)) if math.isfinite(snr) else nan
    norm = float(values.get(signals.LATENT_NORM, nan))
    rms = norm / math.sqrt(max(ctx.latents.numel(), 1))
    t = ctx.timestep / NUM_TRAIN_TIMESTEPS
    last = max(num_blocks - 1, 1)
    rows = [[float(entropy[b]), log_snr, rms, t, b / last] for b in range(num_blocks)]
    return torch.tensor(rows, dtype=torch.float32)
