"""A strategy: one case's parts assembled, plus the per-call state that makes them work.

The sampler calls `before_step` once per denoising step; that is where the gate decides,
for every block at once, from signals gathered in one host transfer. The adapter routes
each block's self-attention through `attention`, which either gives back the cache or
computes (and stores, and probes if the gate needs entropy); a cache whose target is
`"attention+mlp"` also gets each feed-forward through `mlp`, and one whose target is
`"block"` gets whole blocks through `block`.

A gate may instead decide once block k of the current forward has computed
(`Gate.DECIDES_AFTER_BLOCK`, FirstBlockCache): `block` measures the residual change there
and asks the gate then, still one host sync per step. Reuse is counted per step from the
decided pattern (`after_step`), never inside the forward, so that `torch.compile` sees no
Python counters change and CUDA-graph replays count like eager calls.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from dqar_bench import signals
from dqar_bench.attention import attend, project_qkv
from dqar_bench.context import StepContext
from dqar_bench.parts import Cache, Gate, Part, Quantizer, Scheduler

# The hook sites of each cache target, in the order a block runs them; the first site's
# cache instance is `Strategy.cache`, each further site gets its own copy.
SITES: dict[str, tuple[str, ...]] = {
    "attention": ("attention",),
    "attention+mlp": ("attention", "mlp"),
    "block": ("block",),
    "cross-attention": ("cross-attention",),
}


def refusal(gate: type[Gate], cache: type[Cache]) -> str | None:
    """Why these parts cannot be wired together (one line), or None."""
    if gate.DECIDES_AFTER_BLOCK is not None and cache.TARGET != "block":
        return (
            f"gate '{gate.PLUGIN_NAME}' decides after block {gate.DECIDES_AFTER_BLOCK} from its residual, "
            f"so it needs a cache whose target is 'block' (such as block-residual), not '{cache.TARGET}'"
        )
    return None


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
        unknown = set(gate.SIGNALS) - signals.KNOWN
        if unknown:
            raise ValueError(f"gate '{gate.PLUGIN_NAME}' asks for unknown signals {sorted(unknown)}")
        reason = refusal(type(gate), type(cache))
        if reason:
            raise ValueError(reason)
        sites = SITES[cache.TARGET]
        self.caches: dict[str, Cache] = {site: cache if i == 0 else copy.deepcopy(cache) for i, site in enumerate(sites)}
        for each in self.caches.values():
            each.quantizer = quantizer
        self.probe_queries = probe_queries
        self.stats = ReuseStats()
        self._mask: torch.Tensor | None = None
        self._reuse: list[bool] = []
        self._entropy: signals.EntropyProbe | None = None
        self._probe: list[bool] = []
        self._num_blocks = 0
        self._ctx: StepContext | None = None
        self._decide_after = gate.DECIDES_AFTER_BLOCK
        self._reference: torch.Tensor | None = None

    @property
    def parts(self) -> dict[str, Part]:
        return {"scheduler": self.scheduler, "gate": self.gate, "cache": self.cache, "quantizer": self.quantizer}

    @property
    def probes_entropy(self) -> bool:
        return signals.ENTROPY in self.gate.SIGNALS

    @property
    def pinned(self) -> bool:
        return self.cache.pinned

    @pinned.setter
    def pinned(self, value: bool) -> None:
        """Caches write in place (CUDA graphs); set before the first sampling call."""
        for each in self.caches.values():
            each.pinned = value

    def begin(self, num_steps: int, num_blocks: int, device: torch.device, timesteps: Sequence[int] | None = None) -> None:
        """Start a sampling call: fresh mask, gate state and an empty cache."""
        self.scheduler.timesteps = [int(t) for t in timesteps] if timesteps is not None else None
        mask = self.scheduler.mask(num_steps, num_blocks)
        if tuple(mask.shape) != (num_steps, num_blocks):
            raise ValueError(
                f"scheduler '{self.scheduler.PLUGIN_NAME}' gave a mask of shape {tuple(mask.shape)}, "
                f"expected ({num_steps}, {num_blocks})"
            )
        self._mask = mask.bool().cpu()
        self._num_blocks = num_blocks
        self._reuse = [False] * num_blocks
        self._reference = None
        if not self.probes_entropy:
            self._entropy = None
        else:  # the same probe (and buffer) from call to call: a captured CUDA graph writes into it
            if self._entropy is None:
                self._entropy = signals.EntropyProbe(self.probe_queries)
            self._entropy.reset(num_blocks, device)
        self.gate.reset(num_steps, num_blocks)
        for each in self.caches.values():
            each.clear()
            each.begin(num_blocks, torch.device(device))

    def reset_stats(self) -> None:
        self.stats = ReuseStats()

    def release(self) -> None:
        """Drop what the caches hold: between interleaved rounds other cases run, and a
        strategy waiting for its next round should hold no memory (each call starts empty)."""
        for each in self.caches.values():
            each.clear()

    def before_step(self, ctx: StepContext) -> None:
        """Decide which blocks reuse at this step (or, for a mid-forward gate, that none has yet)."""
        assert self._mask is not None, "begin() must be called before the first step"
        self._ctx = ctx
        self._reuse = [False] * self._num_blocks
        self._probe = self._probing(ctx.step)
        if self._decide_after is not None:
            return  # decided in `block`, once block k has computed
        eligible = self._eligible(ctx.step)
        if any(eligible):
            ctx.signals = self._gather_signals(ctx)
            decided = self.gate.decide(ctx, eligible)
            self._reuse = [bool(d) and e for d, e in zip(decided, eligible)]
        self._begin_caches(ctx.step)

    def _begin_caches(self, step: int) -> None:
        computes = [not r for r in self._reuse]
        for each in self.caches.values():
            each.begin_step(step, computes)

    def after_step(self) -> None:
        self.stats.evaluations += self._num_blocks
        self.stats.reused += sum(self._reuse)
        held = sum(each.nbytes() for each in self.caches.values())
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, held)

    def graph_key(self) -> tuple:
        """Everything that changes the operations of this step's forward: one CUDA graph each."""
        return (tuple(self._reuse), tuple(self._probe), *(each.graph_key() for each in self.caches.values()))

    def _probing(self, step: int) -> list[bool]:
        """Blocks to probe if they compute now: those the scheduler lets reuse at the next step.

        A block's entropy is read only at steps where it may reuse, and is the one from its
        last compute, which is then either the step before (eligible next) or followed by
        reuse steps only (eligible from the step after it). So no other probe is ever read.
        """
        assert self._mask is not None
        if self._entropy is None or step + 1 >= len(self._mask):
            return [False] * self._num_blocks
        return self._mask[step + 1].tolist()

    def _eligible(self, step: int, first: int = 0) -> list[bool]:
        assert self._mask is not None
        row = self._mask[step].tolist()
        return [b >= first and bool(m) and all(c.holds(b) for c in self.caches.values()) for b, m in enumerate(row)]

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
        if self._reuse[block]:
            return self.cache.reuse(block, attn, hidden_states)
        probe = self._probe[block]
        if self.cache.NEEDS_QKV or probe:
            q, k, v = project_qkv(attn, hidden_states)
            if probe:
                self._entropy.record(block, q, k)  # type: ignore[union-attr]
            out = attend(attn, q, k, v, hidden_states)
            self.cache.store(block, out, (q, k, v))
        else:
            out = original(hidden_states, *args, **kwargs)
            self.cache.store(block, out, None)
        return out

    def mlp(
        self,
        block: int,
        ff: torch.nn.Module,
        original: Callable[..., torch.Tensor],
        hidden_states: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """A block's feed-forward (target "attention+mlp"): from its cache, or computed and stored."""
        cache = self.caches["mlp"]
        if self._reuse[block]:
            return cache.reuse(block, ff, hidden_states)
        out = original(hidden_states, *args, **kwargs)
        cache.store(block, out, None)
        return out

    def block(
        self,
        index: int,
        module: torch.nn.Module,
        original: Callable[..., torch.Tensor],
        hidden_states: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """A whole block (target "block"): its input plus the cached residual, or computed.

        The residual (output minus input) is what is stored, so a reused block still
        passes on what changed upstream of it; over a run of reused blocks this is
        Delta-DiT's Delta-Cache and FirstBlockCache's cached tail.
        """
        cache = self.caches["block"]
        if self._reuse[index]:
            return hidden_states + cache.reuse(index, module, hidden_states).to(hidden_states.dtype)
        out = original(hidden_states, *args, **kwargs)
        residual = out - hidden_states
        cache.store(index, residual, None)
        if index == self._decide_after:
            self._decide_mid_forward(index, residual)
        return out

    def _decide_mid_forward(self, index: int, residual: torch.Tensor) -> None:
        """The gate's decision for blocks after `index`, from this forward's residual there.

        The reference is block `index`'s residual at the last step where every later block
        computed, as in FirstBlockCache: the change accumulates over reused steps.
        """
        ctx = self._ctx
        assert ctx is not None, "before_step() must be called before the forward"
        eligible = self._eligible(ctx.step, first=index + 1)
        if self._reference is None or not any(eligible):
            change = math.inf
        else:
            change = float(signals.residual_change(residual, self._reference))  # the step's one host sync
        ctx.signals = {signals.RESIDUAL_CHANGE: change}
        decided = self.gate.decide(ctx, eligible) if any(eligible) else [False] * len(eligible)
        self._reuse = [bool(d) and e for d, e in zip(decided, eligible)]
        if not any(self._reuse):
            self._reference = residual.detach()
        self._begin_caches(ctx.step)

    def _gather_signals(self, ctx: StepContext) -> dict[str, Any]:
        """Every signal the gate asked for, moved to the host in one transfer."""
        wanted = self.gate.SIGNALS
        if not wanted:
            return {}
        values: list[torch.Tensor] = []
        names: list[str] = []
        device = ctx.latents.device
        if signals.SNR in wanted:
            names.append(signals.SNR)
            no_x0_yet = ctx.x0 is None  # before the first step: the SNR is undefined
            values.append(torch.tensor(float("nan"), device=device) if no_x0_yet else signals.latent_snr(ctx.latents, ctx.x0))
        if signals.LATENT_NORM in wanted:
            names.append(signals.LATENT_NORM)
            values.append(signals.latent_norm(ctx.latents))
        flat = torch.stack([v.float().reshape(()) for v in values]) if values else torch.empty(0, device=device)
        if self._entropy is not None:
            flat = torch.cat([flat, self._entropy.entropies()])
        host = flat.tolist()
        out: dict[str, Any] = dict(zip(names, host[: len(names)]))
        if self._entropy is not None:
            out[signals.ENTROPY] = host[len(names):]
        return out
