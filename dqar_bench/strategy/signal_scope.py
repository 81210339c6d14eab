"""Where a gate's signals are measured: the one seam between a strategy and a split model.

On one process a block's tensors are whole, and the strategy measures its signals with the
plain functions of `dqar_bench.strategy.signals`; `SignalScope` is exactly that, so one process runs
the same operations it always did (bit-identical outputs, tested). Under context
parallelism each rank holds a slice of the sequence inside the blocks, so the entropy a
block's probe sees and the residual FirstBlockCache measures are one rank's share; a
subclass (`dqar_bench.strategy.context_parallel.ShardedSequence`) reduces them over the
ranks so every rank reads the whole sequence's value, and makes every rank run rank 0's
decisions. The strategy asks its scope for every signal and for the final word on its
decisions, and nothing else in it knows about ranks.
"""

from __future__ import annotations

import torch

from dqar_bench.strategy import signals


class SignalScope:
    """The whole tensors, on this process: every method is the plain signal of `dqar_bench.strategy.signals`."""

    taps_attention = True
    """The probe reads q and k from the processor's own SDPA call (`signals.SdpaTap`); a scope
    whose ranks each see part of an attention projects its own rows instead (`probe_qk`)."""

    def key_count(self, local: int) -> int:
        """The keys a probed row attends over, from the `local` keys this process holds."""
        return local

    def probe_qk(self, attn: torch.nn.Module, x: torch.Tensor, num_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe's query rows and all keys of `attn` on its input `x` (`signals.probe_qk`)."""
        return signals.probe_qk(attn, x, num_queries)

    def scores_entropy(self, scores: torch.Tensor) -> torch.Tensor:
        """Mean row entropy per leading index of sampled scores [blocks, ..., rows, keys] (`signals.scores_entropy`)."""
        return signals.scores_entropy(scores)

    def snr(self, latents: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """`signals.latent_snr` of the sampling call's latents."""
        return signals.latent_snr(latents, x0)

    def latent_norm(self, latents: torch.Tensor) -> torch.Tensor:
        return signals.latent_norm(latents)

    def residual_change(self, residual: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """`signals.residual_change` of a block's residual against its reference."""
        return signals.residual_change(residual, reference)

    def agree(self, decisions: list[bool]) -> list[bool]:
        """The decisions every process of the sampling call runs: on one process, its own."""
        return decisions


class ProjectedProbe(SignalScope):
    """The whole tensors, the probe projecting its own query rows and keys from each
    attention's input (`probe_qk`, the seed's form) as a split model's ranks do: what a
    context-parallel call is compared with on one process."""

    taps_attention = False


LOCAL = SignalScope()
"""The scope of every strategy until something splits its model."""
