"""A strategy: one case's parts assembled, plus the per-call state that makes them work.

The sampler calls `before_step` once per denoising step; that is where the gate decides,
for every block at once, from signals gathered in one host transfer. The adapter routes
each block's self-attention through `attention`, which either gives back the cache or
computes (and stores, and probes if the gate needs entropy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from dqar_bench import signals
from dqar_bench.attention import attend, project_qkv
from dqar_bench.context import StepContext
from dqar_bench.parts import Cache, Gate, Part, Quantizer, Scheduler


@dataclass
class ReuseStats:
    """Counts over the sampling calls since the last `reset`."""

    reused: int = 0
    evaluations: int = 0
    peak_cache_bytes: int = 0

    @property
    def reuse_ratio(self) -> float:
        return self.reused / self.evaluations if self.evaluations else 0.0


class Strategy:
    """The parts of one case, wired together; installed on a model by an adapter."""

    def __init__(
        self,
        scheduler: Scheduler,
        gate: Gate,
        cache: Cache,
        quantizer: Quantizer,
        probe_queries: int = 16,
    ) -> None:
        self.scheduler, self.gate, self.cache, self.quantizer = scheduler, gate, cache, quantizer
        cache.quantizer = quantizer
        unknown = set(gate.SIGNALS) - signals.KNOWN
        if unknown:
            raise ValueError(f"gate '{gate.PLUGIN_NAME}' asks for unknown signals {sorted(unknown)}")
        self.probe_queries = probe_queries
        self.stats = ReuseStats()
        self._mask: torch.Tensor | None = None
        self._reuse: list[bool] = []
        self._entropy: torch.Tensor | None = None
        self._num_blocks = 0

    @property
    def parts(self) -> dict[str, Part]:
        return {"scheduler": self.scheduler, "gate": self.gate, "cache": self.cache, "quantizer": self.quantizer}

    @property
    def probes_entropy(self) -> bool:
        return signals.ENTROPY in self.gate.SIGNALS

    def begin(self, num_steps: int, num_blocks: int, device: torch.device) -> None:
        """Start a sampling call: fresh mask, gate state and an empty cache."""
        mask = self.scheduler.mask(num_steps, num_blocks)
        if tuple(mask.shape) != (num_steps, num_blocks):
            raise ValueError(
                f"scheduler '{self.scheduler.PLUGIN_NAME}' gave a mask of shape {tuple(mask.shape)}, "
                f"expected ({num_steps}, {num_blocks})"
            )
        self._mask = mask.bool().cpu()
        self._num_blocks = num_blocks
        self._reuse = [False] * num_blocks
        self._entropy = torch.full((num_blocks,), float("nan"), device=device) if self.probes_entropy else None
        self.gate.reset(num_steps, num_blocks)
        self.cache.clear()

    def reset_stats(self) -> None:
        self.stats = ReuseStats()

    def before_step(self, ctx: StepContext) -> None:
        """Decide which blocks reuse at this step."""
        assert self._mask is not None, "begin() must be called before the first step"
        row = self._mask[ctx.step].tolist()
        eligible = [bool(m) and self.cache.holds(b) for b, m in enumerate(row)]
        if any(eligible):
            ctx.signals = self._gather_signals(ctx)
            decided = self.gate.decide(ctx, eligible)
            self._reuse = [bool(d) and e for d, e in zip(decided, eligible)]
        else:
            self._reuse = [False] * self._num_blocks

    def after_step(self) -> None:
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, self.cache.nbytes())

    def attention(
        self,
        block: int,
        attn: torch.nn.Module,
        original: Callable[..., torch.Tensor],
        hidden_states: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """A block's self-attention: from the cache, or computed and stored."""
        self.stats.evaluations += 1
        if self._reuse[block]:
            self.stats.reused += 1
            return self.cache.reuse(block, attn, hidden_states)
        if self.cache.NEEDS_QKV or self.probes_entropy:
            q, k, v = project_qkv(attn, hidden_states)
            if self._entropy is not None:
                self._entropy[block] = signals.attention_entropy(q, k, self.probe_queries)
            out = attend(attn, q, k, v, hidden_states)
            self.cache.store(block, out, (q, k, v))
        else:
            out = original(hidden_states, *args, **kwargs)
            self.cache.store(block, out, None)
        return out

    def _gather_signals(self, ctx: StepContext) -> dict[str, Any]:
        """Every signal the gate asked for, moved to the host in one transfer."""
        wanted = self.gate.SIGNALS
        if not wanted:
            return {}
        values: list[torch.Tensor] = []
        names: list[str] = []
        device = ctx.latents.device
        nan = torch.tensor(float("nan"), device=device)
        if signals.SNR in wanted:
            names.append(signals.SNR)
            values.append(signals.latent_snr(ctx.latents, ctx.x0) if ctx.x0 is not None else nan)
        if signals.LATENT_NORM in wanted:
            names.append(signals.LATENT_NORM)
            values.append(signals.latent_norm(ctx.latents))
        flat = torch.stack([v.float().reshape(()) for v in values]) if values else torch.empty(0, device=device)
        if self._entropy is not None:
            flat = torch.cat([flat, self._entropy.float()])
        host = flat.tolist()
        out: dict[str, Any] = dict(zip(names, host[: len(names)]))
        if self._entropy is not None:
            out[signals.ENTROPY] = host[len(names):]
        return out
