"""Gate `dbcache`: cache-dit's DBCache (Dual Block Cache), decided once the first Fn blocks computed.

cache-dit (vipshop/cache-dit 1.5.3, `cache_dit/caching/cache_blocks/pattern_base.py`
`forward`, `cache_contexts/cache_manager.py` `can_cache` / `similarity`) splits the block
stack in three: the first `Fn` blocks always compute; the change of their joint residual
(`H_Fn - H_0`, image stream) since the last step where every block ran,
`mean|r - r_ref| / mean|r_ref|`, decides whether the middle blocks are skipped (their
cached residual added instead); the last `Bn` blocks always compute again, correcting the
cached middle. FirstBlockCache is F1B0 (`residual-change`, kept under its name).

A step caches, as `can_cache` checks in this order, unless:
- it is one of the first `warmup` steps (`max_warmup_steps`, `warmup_steps = range(0, W)`);
- `max_cached_steps` steps of this call already cached (-1: no cap);
- the last `max_continuous_cached_steps` steps all cached (-1: no cap; a computed step
  ends the run);
- the change is not `< threshold` (`similarity` returns `diff < threshold`).

`<` is cache-dit's; diffusers' FirstBlockCache hook computes where `diff > threshold`, so it
caches at `<=`. The two differ only where the change equals the threshold exactly (say a
threshold of 0 with bit-identical residuals: diffusers reuses, cache-dit and this gate
compute). cache-dit also treats a threshold >= 1.0 as "always similar" (caches whatever the
change, within the caps); this gate compares the change as it is.

Defaults are cache-dit's `DBCacheConfig` (`cache_contexts/cache_config.py` lines 28-59:
Fn 8, Bn 0, threshold 0.08, 8 warm-up steps, no caps). With CFG as two passes cache-dit
keeps separate counters and references for the CFG branch (`enable_separate_cfg`); here the
conditional pass decides for both, as for every mid-forward gate. TaylorSeer's calibrator on
the cached middle is not reproduced: a `cache-dit:` case runs it (`dqar_bench.strategy.cache_dit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.strategy.signals import RESIDUAL_CHANGE


@dataclass
class DBCache(Gate):
    """Compute the first Fn and last Bn blocks; skip the middle while the Fn residual changed by less than a threshold (cache-dit)."""

    PLUGIN_NAME = "dbcache"
    SIGNALS = frozenset({RESIDUAL_CHANGE})
    DECIDES_AFTER_BLOCK = 0
    THRESHOLD = "threshold"
    """Per instance: Fn - 1 (the strategy reads the instance's)."""
    UNSUPPORTED = {"cudagraph": "decides inside the forward (after the Fn blocks), which no captured graph can hold"}

    threshold: float = field(default=0.08, metadata={"help": "residual_diff_threshold: relative L1 change of the Fn blocks' residual below which the middle is reused (cache-dit: 0.08)"})
    fn: int = field(default=8, metadata={"help": "Fn_compute_blocks: leading blocks that always compute and measure the change (cache-dit: 8)"})
    bn: int = field(default=0, metadata={"help": "Bn_compute_blocks: trailing blocks that always compute (cache-dit: 0)"})
    warmup: int = field(default=8, metadata={"help": "max_warmup_steps: leading steps that never cache (cache-dit: 8)"})
    max_cached_steps: int = field(default=-1, metadata={"help": "most cached steps per sampling call; -1: no cap"})
    max_continuous_cached_steps: int = field(default=-1, metadata={"help": "most cached steps in a row; -1: no cap"})

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"parameter 'threshold' must be >= 0, got {self.threshold}")
        if self.fn < 1:
            raise ValueError(f"parameter 'fn' must be >= 1 (the change is measured after the Fn blocks), got {self.fn}")
        for name in ("bn", "warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"parameter '{name}' must be >= 0, got {getattr(self, name)}")
        for name in ("max_cached_steps", "max_continuous_cached_steps"):
            if getattr(self, name) < -1:
                raise ValueError(f"parameter '{name}' must be >= 0, or -1 for no cap, got {getattr(self, name)}")
        self.DECIDES_AFTER_BLOCK = self.fn - 1
        self._cached = 0
        self._run = 0
        self._last_cached = -2

    def reset(self, num_steps: int, num_blocks: int) -> None:
        self._cached, self._run, self._last_cached = 0, 0, -2

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        if self._last_cached != ctx.step - 1:
            self._run = 0  # a computed step ends the run
        reuse = (
            ctx.step >= self.warmup
            and not (self.max_cached_steps >= 0 and self._cached >= self.max_cached_steps)
            and not (self.max_continuous_cached_steps >= 0 and self._run >= self.max_continuous_cached_steps)
            and ctx.signals[RESIDUAL_CHANGE] < self.threshold
        )
        if reuse:
            self._cached += 1
            self._run += 1
            self._last_cached = ctx.step
        tail = len(eligible) - self.bn
        return [reuse and e and b < tail for b, e in enumerate(eligible)]


@hookimpl
def register_gates():
    return [DBCache]
