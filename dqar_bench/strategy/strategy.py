"""A strategy: one case's parts assembled, plus the per-call state that makes them work.

The sampler calls `before_step` once per denoising step; that is where the gate decides,
for every block at once, from signals gathered in one host transfer. The adapter routes
each block's self-attention through `attention`, which either gives back the cache or
computes (and probes if the gate needs entropy, reading the q and k the block's own
attention forms; and stores, where the scheduler lets the block reuse at the next step:
a cache that gives back the last compute needs no other store); a cache whose target is
`"attention+mlp"` also gets each feed-forward through `output`, one whose target is
`"cross-attention"` gets each block's cross-attention there instead of its self-attention
(PAB's cross-attention broadcast, over its own range), and one whose target is `"block"`
gets whole blocks through `block`. Where such a cache hooks no self-attention and the gate
reads entropy, each block's self-attention also goes through `probe`, which only records:
so every DQAR gate works on every cache, and reads the attention a block computed when it
last ran.

Every hooked module has a cache instance of its own, keyed by its slot: `attention`,
`mlp`, `cross-attention`, `block` for the first module a family names at a site, `mlp/1` for the second
(FLUX's `ff_context`) and so on (`bind`, from the adapter); each instance is keyed by
block. What a module gives may be a tuple: a joint attention returns its image and text
outputs, a two-stream block its image and text residuals; caches store and give back the
tuple (`dqar_bench.strategy.storage.pack`). A model run as two passes per step (classifier-free
guidance with separate conditional and unconditional calls) tells the strategy which
branch runs (`branch`): each branch keeps its own cache entries, and both follow one
decision unless the gate answers per branch (`Gate.decide_branches`, MagCache on Wan).

A gate may instead decide once block k of the current forward has computed
(`Gate.DECIDES_AFTER_BLOCK`, FirstBlockCache): `block` measures the residual change there
and asks the gate then, still one host sync per step. With k = -1 (TeaCache) it decides at
block 0's entry, from the change of block 0's timestep-modulated input since the previous
step (the adapter hands `block` a reader of it), so every block may reuse. Reuse is counted per step from the
decided pattern (`after_step`), never inside the forward, so that `torch.compile` sees no
Python counters change and CUDA-graph replays count like eager calls.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from dqar_bench.core.context import StepContext
from dqar_bench.core.parts import Cache, Gate, Part, Quantizer, Scheduler
from dqar_bench.strategy import signals
from dqar_bench.strategy.attention import attend, project_qkv
from dqar_bench.strategy.signal_scope import LOCAL, SignalScope
from dqar_bench.strategy.storage import first_tensor, streams_map

# The hook sites of each cache target, in the order a block runs them; the first site's
# cache instance is `Strategy.cache`, each further site gets its own copy.
SITES: dict[str, tuple[str, ...]] = {
    "attention": ("attention",),
    "attention+mlp": ("attention", "mlp"),
    "cross-attention": ("cross-attention",),
    "block": ("block",),
}


def refusal(gate: type[Gate], cache: type[Cache]) -> str | None:
    """Why these parts cannot be wired together (one line), or None."""
    if gate.DECIDES_AFTER_BLOCK is not None and cache.TARGET != "block":
        when = "before block 0, from its modulated input" if gate.DECIDES_AFTER_BLOCK == -1 else f"after block {gate.DECIDES_AFTER_BLOCK} from its residual"
        return (
            f"gate '{gate.PLUGIN_NAME}' decides {when}, "
            f"so it needs a cache whose target is 'block' (such as block-residual), not '{cache.TARGET}'"
        )
    return None


def schedule_mask(scheduler: Scheduler, num_steps: int, num_blocks: int, timesteps: Sequence[int] | None = None) -> torch.Tensor:
    """The scheduler's [steps, blocks] bool mask for a call (on the host), its shape checked:
    one place for a sampling call and for `dqar-bench plan`."""
    scheduler.timesteps = [int(t) for t in timesteps] if timesteps is not None else None
    mask = scheduler.mask(num_steps, num_blocks)
    if tuple(mask.shape) != (num_steps, num_blocks):
        raise ValueError(
            f"scheduler '{scheduler.PLUGIN_NAME}' gave a mask of shape {tuple(mask.shape)}, expected ({num_steps}, {num_blocks})"
        )
    return mask.bool().cpu()


@dataclass
class ReuseStats:
    """Counts over the sampling calls since the last `reset`."""

    reused: int = 0
    evaluations: int = 0
    peak_cache_bytes: int = 0
    count_nonfinite: Callable[[], int] = field(default=lambda: 0, repr=False)
    nonfinite_before: int = 0
    reuse_map: list[list[int]] = field(default_factory=list)
    """How many of the counted calls reused block b at step t: `reuse_map[t][b]`; sums to `reused`."""
    calls: int = 0
    """Sampling calls counted (the denominator that turns `reuse_map` into a frequency)."""

    @property
    def reuse_ratio(self) -> float:
        return self.reused / self.evaluations if self.evaluations else 0.0

    @property
    def nonfinite_cached(self) -> int:
        """NaN or inf values handed to the quantizer since the reset (they come back as NaN,
        and did not spoil the rest of their group's scale); one host read, so ask after the
        timed calls."""
        return self.count_nonfinite() - self.nonfinite_before

    def begin_call(self, num_steps: int, num_blocks: int) -> None:
        """Count a call; the map grows to the largest (steps, blocks) seen, so it always sums to `reused`."""
        width = max(num_blocks, len(self.reuse_map[0]) if self.reuse_map else 0)
        for row in self.reuse_map:
            row.extend([0] * (width - len(row)))
        self.reuse_map.extend([0] * width for _ in range(num_steps - len(self.reuse_map)))
        self.calls += 1

    def count_step(self, step: int, reuse: list[bool]) -> None:
        self.evaluations += len(reuse)
        self.reused += sum(reuse)
        row = self.reuse_map[step]
        for block, reused in enumerate(reuse):
            if reused:
                row[block] += 1


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
        # Every further slot starts from a copy of the cache as built, never of one that has
        # held a call's tensors (an adapter binds again each time the strategy is installed).
        self._pristine = copy.deepcopy(cache)
        self.caches: dict[str, Cache] = {site: cache if i == 0 else copy.deepcopy(self._pristine) for i, site in enumerate(sites)}
        for each in self.caches.values():
            each.quantizer = quantizer
        self.probe_queries = probe_queries
        self.stats = ReuseStats(count_nonfinite=quantizer.nonfinite)
        self._mask: torch.Tensor | None = None
        self._reuse: list[bool] = []
        self._reuses: list[list[bool]] = []
        """Per branch, this step's reuse; `_reuse` is the running branch's."""
        self._entropy: signals.EntropyProbe | None = None
        self._tap: signals.SdpaTap | None = None
        self._snr_from_x0 = False
        """`wants_x0`, read once per call in `begin` (the per-step signal gather reads it)."""
        self._probe: list[bool] = []
        self._fresh: set[int] = set()
        """Blocks whose entropy scores were recorded since the signals were last gathered."""
        self._store: list[bool] = []
        self._skips_stores = bool(getattr(type(cache), "STORES_LAST_COMPUTE_ONLY", False))
        self.lean_stores = True
        """Skip the stores no reuse can read (`_storing`); off under compiled and graph
        execution, where a store pattern that changes by step would be one more program."""
        self._num_blocks = 0
        self._ctx: StepContext | None = None
        self._decide_after = gate.DECIDES_AFTER_BLOCK
        self._reference: torch.Tensor | None = None
        self._modulated: torch.Tensor | None = None
        self._entry: torch.Tensor | None = None
        self._uses: dict[str, set[int]] | None = None
        self._own_attention = True
        self._branches = 1
        self._branch = 0
        self._offset = 0
        self.scope: SignalScope = LOCAL
        """Where signals are measured and decisions agreed: this process's whole tensors, or a
        model split across ranks (context parallelism sets it while installed)."""

    def bind(self, uses: dict[str, set[int]], own_attention: bool = True, family: Any = None, config: Any = None) -> None:
        """The adapter's layout: which blocks have a module in each cache slot (`attention`,
        `mlp`, `mlp/1`, ...), and whether the harness's own attention path is exact for this
        model (else probes project Q and K on the side). Slots beyond the first of a site get
        their own copy of the cache. The gate learns the model's family and config (`Gate.bind_family`)."""
        if family is not None:
            self.gate.bind_family(family, config)
        for key in uses:
            if key not in self.caches:
                extra = copy.deepcopy(self._pristine)
                extra.quantizer = self.quantizer
                self.caches[key] = extra
        self._uses = {key: set(blocks) for key, blocks in uses.items()}
        self._own_attention = own_attention

    def unbind(self) -> None:
        """Back to the unbound layout (every slot serves every block); extra slots are dropped."""
        first = set(SITES[self.cache.TARGET])
        for key in [k for k in self.caches if k not in first]:
            del self.caches[key]
        self._uses = None
        self._own_attention = True

    @property
    def parts(self) -> dict[str, Part]:
        return {"scheduler": self.scheduler, "gate": self.gate, "cache": self.cache, "quantizer": self.quantizer}

    @property
    def wants_x0(self) -> bool:
        """The sampler's predicted x0 is read (an SNR from x0); otherwise the loop skips it."""
        return signals.SNR in self.gate.SIGNALS and signals.snr_source(self.gate) == "x0"

    @property
    def cfg_cache(self) -> Any:
        """The cache's guidance-level part the sampler drives (FasterCache's CFG cache), or None."""
        return getattr(self.cache, "cfg", None)

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

    def begin(
        self, num_steps: int, num_blocks: int, device: torch.device, timesteps: Sequence[int] | None = None, branches: int = 1,
        noise: Sequence[tuple[float, float | None]] | None = None,
    ) -> None:
        """Start a sampling call: fresh mask, gate state and an empty cache (one set of entries per branch).

        The mask is the scheduler's, narrowed to the gate's `window` where the sampler told
        each step's noise level (`noise`): a block never probes, stores or is asked about at
        a step where the gate cannot reuse it, so those cost nothing (the gate's answers, and
        so the outputs, are the same: it said no there)."""
        self._mask = schedule_mask(self.scheduler, num_steps, num_blocks, timesteps)
        if noise is not None:
            window = self.gate.window([signals.schedule_snr(a, sigma) for a, sigma in noise], num_blocks)
            if window is not None:
                if tuple(window.shape) != (num_steps, num_blocks):
                    raise ValueError(f"gate '{self.gate.PLUGIN_NAME}' gave a window of shape {tuple(window.shape)}, expected ({num_steps}, {num_blocks})")
                self._mask &= window.bool().cpu()
        self._snr_from_x0 = self.wants_x0
        self._num_blocks = num_blocks
        self.stats.begin_call(num_steps, num_blocks)
        self._branches, self._branch, self._offset = branches, 0, 0
        self._reuse = [False] * num_blocks
        self._reuses = [self._reuse] * branches
        self._reference = None
        self._modulated = None
        self._probe, self._fresh = [], set()
        if not self.probes_entropy:
            self._entropy = self._tap = None
        else:  # the same probe (and buffer) from call to call: a captured CUDA graph writes into it
            if self._entropy is None:
                normalised = signals.entropy_unit(self.gate) == "normalised"
                self._entropy = signals.EntropyProbe(self.probe_queries, normalised)
            self._entropy.reset(num_blocks, device)
            self._entropy.reduce = self.scope.scores_entropy
            self._entropy.key_count = self.scope.key_count
            self._tap = signals.SdpaTap(self._entropy) if self.scope.taps_attention else None
        self.gate.reset(num_steps, num_blocks)
        self.quantizer.begin(torch.device(device))
        for each in self.caches.values():
            each.clear()
            each.begin(num_blocks * branches, torch.device(device))

    def branch(self, index: int) -> None:
        """The next forward is branch `index` of this step (two-pass guidance: 0 conditional, 1 unconditional)."""
        self._branch, self._offset = index, index * self._num_blocks
        if index < len(self._reuses):
            self._reuse = self._reuses[index]

    def reset_stats(self) -> None:
        self.stats = ReuseStats(count_nonfinite=self.quantizer.nonfinite, nonfinite_before=self.quantizer.nonfinite())

    def release(self) -> None:
        """Drop what the caches hold: between interleaved rounds other cases run, and a
        strategy waiting for its next round should hold no memory (each call starts empty)."""
        for each in self.caches.values():
            each.clear()

    def before_step(self, ctx: StepContext) -> None:
        """Decide which blocks reuse at this step (or, for a mid-forward gate, that none has yet)."""
        assert self._mask is not None, "begin() must be called before the first step"
        self._ctx = ctx
        if self._entropy is not None:  # the last step's probed blocks that computed (branch 0 probes) recorded
            self._fresh.update(b for b, (p, r) in enumerate(zip(self._probe, self._reuses[0])) if p and not r)
        self._branch, self._offset = 0, 0
        self._reuse = [False] * self._num_blocks
        self._reuses = [self._reuse] * self._branches
        self._probe = self._probing(ctx.step)
        self._store = self._storing(ctx.step)
        if self._decide_after is not None:
            return  # decided in `block`, once block k has computed
        eligible = self._eligible(ctx.step)
        if any(eligible):
            ctx.signals = self._gather_signals(ctx)
            if self._branches == 1:
                answers = [self._decide(ctx, eligible)]
            else:
                answers = self.gate.decide_branches(ctx, eligible, self._branches)
            self._reuses = [self.scope.agree([bool(d) and e for d, e in zip(decided, eligible)]) for decided in answers]
            self._reuse = self._reuses[0]
        self._begin_caches(ctx.step)

    def _decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        """The gate's answer, one per block; any other length is the gate's bug, named."""
        decided = self.gate.decide(ctx, eligible)
        count = len(decided) if hasattr(decided, "__len__") else None
        if count != len(eligible):
            got = f"{count} answers" if count is not None else f"a {type(decided).__name__}"
            raise ValueError(
                f"gate '{self.gate.PLUGIN_NAME}' ({type(self.gate).__module__}.{type(self.gate).__name__}) answered "
                f"{got} at step {ctx.step} for {len(eligible)} blocks; decide() must return one bool per block"
            )
        return list(decided)

    def _begin_caches(self, step: int) -> None:
        computes = [not r for reuse in self._reuses for r in reuse]
        for each in self.caches.values():
            each.begin_step(step, computes)

    def after_step(self) -> None:
        assert self._ctx is not None, "before_step() must be called before after_step()"
        # a block counts as reused at a step where any branch reused it (as diffusers' hooks are counted)
        self.stats.count_step(self._ctx.step, [any(each) for each in zip(*self._reuses)])
        held = sum(each.nbytes() for each in self.caches.values())
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, held)

    def graph_key(self) -> tuple:
        """Everything that changes the operations of this step's forward: one CUDA graph each."""
        # no store pattern: compiled and graph execution turn lean stores off (every compute stores)
        return (self._branch, tuple(self._reuse), tuple(self._probe), *(each.graph_key() for each in self.caches.values()))

    def _storing(self, step: int) -> list[bool]:
        """Blocks whose compute at `step` is stored: for a cache that gives back the last
        compute only, those the scheduler lets reuse at the next step. A block that may not
        reuse next computes again then, and stores then if it may reuse after; so a reuse
        always finds its block's last compute, and no pack is made that nothing reads."""
        assert self._mask is not None
        if not (self._skips_stores and self.lean_stores):
            return [True] * self._num_blocks
        if step + 1 >= len(self._mask):
            return [False] * self._num_blocks
        return self._mask[step + 1].tolist()

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
        return [b >= first and bool(m) and self._holds(b) for b, m in enumerate(row)]

    def _holds(self, block: int) -> bool:
        """Every cache slot the block has holds something for it, in every branch."""
        for key, cache in self.caches.items():
            if self._uses is not None and block not in self._uses.get(key, ()):
                continue
            if not all(cache.holds(block + branch * self._num_blocks) for branch in range(self._branches)):
                return False
        return True

    def attention(
        self,
        key: str,
        block: int,
        attn: torch.nn.Module,
        original: Callable[..., Any],
        hidden_states: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """A block's self-attention: from the cache, or computed and stored."""
        cache = self.caches[key]
        slot = block + self._offset
        if self._reuse[block]:
            return cache.reuse(slot, attn, hidden_states)
        probe = self._probe[block] and self._branch == 0 and key == "attention"
        if cache.NEEDS_QKV:
            q, k, v = project_qkv(attn, hidden_states)
            if probe:
                self._entropy.record(block, q, k)  # type: ignore[union-attr]
            out = attend(attn, q, k, v, hidden_states)
            if self._store[block]:
                cache.store(slot, out, (q, k, v))
            return out
        if probe:
            out = self._probed(block, attn, original, hidden_states, args, kwargs)
        else:
            out = original(hidden_states, *args, **kwargs)
        if self._store[block]:
            cache.store(slot, out, None)
        return out

    @property
    def probes_apart(self) -> bool:
        """The gate reads entropy but the cache hooks no self-attention (a whole-block or a
        cross-attention cache): the adapter then routes each block's self-attention through
        `probe`, so the gate reads the attention the block computed when it last ran (a
        reused block runs no attention, and its probe slot keeps that compute's scores)."""
        return self.probes_entropy and "attention" not in SITES[self.cache.TARGET]

    def probe(
        self, block: int, attn: torch.nn.Module, original: Callable[..., Any], hidden_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        """A self-attention the cache does not hold (`probes_apart`): always computed, its
        entropy recorded where `attention` would record it (blocks the scheduler lets reuse
        at the next step, the first branch)."""
        if self._probe[block] and self._branch == 0:
            return self._probed(block, attn, original, hidden_states, args, kwargs)
        return original(hidden_states, *args, **kwargs)

    def _probed(self, block: int, attn: torch.nn.Module, original: Callable[..., Any], hidden_states: torch.Tensor, args: tuple, kwargs: dict) -> Any:
        """The module's call, with its entropy recorded from the q and k it computes: the
        harness's own attention where that is the model's (`own_attention`), else the
        module's own call with the q and k its processor hands to SDPA (`signals.SdpaTap`);
        where neither can be (linear attention, no SDPA call, a compiled forward, a split
        sequence), from a projection of its input (`probe_qk`)."""
        if self._own_attention:
            q, k, v = project_qkv(attn, hidden_states)
            self._entropy.record(block, q, k)  # type: ignore[union-attr]
            return attend(attn, q, k, v, hidden_states)
        linear = signals.linear_attention(attn)
        if self._tap is not None and not linear and not torch.compiler.is_compiling():
            out, seen = self._tap.run(block, original, hidden_states, *args, **kwargs)
            if seen:
                return out
        else:
            out = original(hidden_states, *args, **kwargs)
        q, k = self.scope.probe_qk(attn, hidden_states, self.probe_queries)
        self._entropy.record(block, q, k, linear=linear)  # type: ignore[union-attr]
        return out

    def output(
        self,
        key: str,
        block: int,
        module: torch.nn.Module,
        original: Callable[..., torch.Tensor],
        hidden_states: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """A module whose output is cached as it is, with no probe: a feed-forward (target
        "attention+mlp") or a cross-attention (target "cross-attention"); from its cache, or
        computed and stored."""
        cache = self.caches[key]
        slot = block + self._offset
        if self._reuse[block]:
            return cache.reuse(slot, module, hidden_states)
        out = original(hidden_states, *args, **kwargs)
        if self._store[block]:
            cache.store(slot, out, None)
        return out

    @property
    def reads_modulation(self) -> bool:
        """The gate decides at block 0's entry from its modulated input (the adapter then passes a reader)."""
        return self._decide_after == -1

    def block(
        self, key: str, index: int, module: torch.nn.Module, compute: Callable[[], Any], streams: Any,
        modulated: Callable[[], torch.Tensor] | None = None,
    ) -> Any:
        """A whole block (target "block"): its input plus the cached residual, or computed.

        `streams` is what the block updates (its `hidden_states`, or a tuple of image and
        text streams, the image first) and `compute()` runs the block and returns the same
        structure. The residual (output minus input) is what is stored, so a reused block
        still passes on what changed upstream of it; over a run of reused blocks this is
        Delta-DiT's Delta-Cache and FirstBlockCache's cached tail.
        """
        cache = self.caches[key]
        slot = index + self._offset
        single = isinstance(streams, torch.Tensor)
        if index == 0 and self._decide_after == -1 and self._branch == 0:
            assert modulated is not None, "the adapter passes block 0's modulated input to a gate that reads it"
            self._decide_at_entry(modulated())
        if index == 0 and self._decide_after and self._decide_after > 0 and self._branch == 0:
            self._entry = first_tensor(streams)  # DBCache's Fn > 1: the change of blocks 0..k together
        if self._reuse[index]:
            held = cache.reuse(slot, module, first_tensor(streams))
            if single:
                return streams + held.to(streams.dtype)
            return streams_map(lambda s, r: s + r.to(s.dtype), streams, held)
        out = compute()
        deciding = index == self._decide_after and self._branch == 0
        if self._store[index] or deciding:
            residual = out - streams if single else streams_map(torch.sub, out, streams)
            if self._store[index]:
                cache.store(slot, residual, None)
            if deciding:
                measured = first_tensor(residual) if index == 0 else first_tensor(out) - self._entry
                self._entry = None
                self._decide_mid_forward(index, measured)
        return out

    def _decide_mid_forward(self, index: int, residual: torch.Tensor) -> None:
        """The gate's decision for blocks after `index`, from this forward's residual there.

        The residual is block 0's (k = 0), or that of blocks 0..k together (DBCache's Fn
        blocks). The reference is that residual at the last step where every later block
        computed, as in FirstBlockCache: the change accumulates over reused steps.
        """
        ctx = self._ctx
        assert ctx is not None, "before_step() must be called before the forward"
        eligible = self._eligible(ctx.step, first=index + 1)
        if self._reference is None or not any(eligible):
            change = math.inf
        else:
            change = float(self.scope.residual_change(residual, self._reference))  # the step's one host sync
        ctx.signals = {signals.RESIDUAL_CHANGE: change}
        decided = self._decide(ctx, eligible) if any(eligible) else [False] * len(eligible)
        self._reuse = self.scope.agree([bool(d) and e for d, e in zip(decided, eligible)])
        self._reuses = [self._reuse] * self._branches
        if not any(self._reuse):
            self._reference = residual.detach()
        self._begin_caches(ctx.step)

    def _decide_at_entry(self, modulated: torch.Tensor) -> None:
        """The gate's decision for every block, from block 0's modulated input, before block 0 runs.

        As in TeaCache the change is against the previous step's input, computed or not. The
        gate is asked where some block is eligible (every step but the first with the `all`
        scheduler), like every gate."""
        ctx = self._ctx
        assert ctx is not None, "before_step() must be called before the forward"
        eligible = self._eligible(ctx.step)
        previous, self._modulated = self._modulated, modulated.detach()
        if previous is None or not any(eligible):  # no gate to ask: no host sync (the input is still kept)
            change = math.inf
        else:
            change = float(self.scope.residual_change(modulated, previous))  # the step's one host sync
        ctx.signals = {signals.MODULATION_CHANGE: change}
        decided = self._decide(ctx, eligible) if any(eligible) else [False] * len(eligible)
        self._reuse = self.scope.agree([bool(d) and e for d, e in zip(decided, eligible)])
        self._reuses = [self._reuse] * self._branches
        self._begin_caches(ctx.step)

    def _gather_signals(self, ctx: StepContext) -> dict[str, Any]:
        """Every signal the gate asked for, moved to the host in one transfer."""
        wanted = self.gate.SIGNALS
        if not wanted:
            return {}
        values: list[torch.Tensor] = []
        names: list[str] = []
        device = ctx.latents.device
        if signals.SNR in wanted and self._snr_from_x0:
            names.append(signals.SNR)
            no_x0_yet = ctx.x0 is None  # before the first step: the SNR is undefined
            values.append(torch.tensor(float("nan"), device=device) if no_x0_yet else self.scope.snr(ctx.latents, ctx.x0))
        if signals.LATENT_NORM in wanted:
            names.append(signals.LATENT_NORM)
            values.append(self.scope.latent_norm(ctx.latents))
        if values or self._entropy is not None:
            flat = torch.stack([v.float().reshape(()) for v in values]) if values else torch.empty(0, device=device)
            if self._entropy is not None:
                flat = torch.cat([flat, self._entropy.entropies(sorted(self._fresh))])
                self._fresh.clear()
            host = flat.tolist()
        else:  # nothing on the device to read: no transfer at all
            host = []
        out: dict[str, Any] = dict(zip(names, host[: len(names)]))
        if self._entropy is not None:
            out[signals.ENTROPY] = host[len(names):]
        if signals.SNR in wanted and not self._snr_from_x0:
            out[signals.SNR] = signals.schedule_snr(ctx.alpha_bar, ctx.sigma)  # a host float: no transfer
        return out
