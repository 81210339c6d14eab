"""Cache `attention-mlp-output`: keep each block's self-attention and MLP outputs (FORA).

FORA (Fast-Forward Caching, Selvaraju et al. 2024) caches the outputs of the attention
and the feed-forward layers and recomputes them every N steps. The block itself still
runs its adaptive norms and gates with the current timestep around the cached outputs,
which is what separates it from `block-residual`. The strategy keeps one instance of this
cache per site (attention, MLP), both following the same per-block decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from dqar_bench import hookimpl
from dqar_bench.strategy.storage import SlotCache


@dataclass
class AttentionMlpOutput(SlotCache):
    """Cache each block's self-attention and feed-forward outputs (FORA's cache)."""

    PLUGIN_NAME = "attention-mlp-output"
    TARGET = "attention+mlp"


@hookimpl
def register_caches():
    return [AttentionMlpOutput]
