"""DBCache (`dbcache`, and FirstBlockCache as its F1B0) against the real cache-dit library.

cache-dit (the optional extra `cache-dit`) runs on the transformer alone (`enable_cache`
with its registered FLUX adapter: both block lists as one, as ours) with the same settings;
the cached steps must be the same and the outputs equal up to float rounding: ours adds each
skipped block's stored residual, cache-dit the middle's as one residual, so the sums differ
in the last bits. 1e-5 on latents of magnitude ~1 (measured: 2.4e-7 to 4.8e-7 over 12 steps).
Skipped when cache-dit is not installed.
"""

from __future__ import annotations

import pytest
import torch

from dqar_bench.core.context import StepContext
from dqar_bench.core.parts import build_part
from dqar_bench.strategies.gates.dbcache import DBCache
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.signals import RESIDUAL_CHANGE
from dqar_bench.strategy.strategy import Strategy
from dqar_bench.testing import _BENCHES, _Bench


def _strategy(registry, gate, params):
    def part(kind, name, p=None):
        return build_part(registry.get(kind, name).cls, p or {})

    return Strategy(part("scheduler", "all"), part("gate", gate, params), part("cache", "block-residual"), part("quantizer", "none"))


def _ctx(step, change, steps=10):
    ctx = StepContext(step=step, num_steps=steps, timestep=0, latents=torch.zeros(1))
    ctx.signals = {RESIDUAL_CHANGE: change}
    return ctx


def test_dbcache_keeps_fn_and_bn_blocks_and_its_caps():
    gate = DBCache(threshold=0.5, fn=2, bn=1, warmup=2, max_cached_steps=3, max_continuous_cached_steps=2)
    gate.reset(10, 6)
    eligible = [False, False, True, True, True, True]  # blocks after Fn - 1 = 1
    answers = [any(gate.decide(_ctx(s, 0.1), eligible)) for s in range(8)]
    # warm-up 0, 1; then 2 in a row, a compute, then the total cap of 3
    assert answers == [False, False, True, True, False, True, False, False]
    fresh = DBCache(threshold=0.5, fn=2, bn=1, warmup=0)
    fresh.reset(10, 6)
    assert fresh.decide(_ctx(1, 0.1), eligible) == [False, False, True, True, True, False]  # the last Bn blocks compute
    assert not any(fresh.decide(_ctx(2, 0.5), eligible))  # cache-dit: diff < threshold, not <=
    assert fresh.DECIDES_AFTER_BLOCK == 1


def test_first_block_cache_is_dbcache_f1b0(registry):
    gate = build_part(registry.get("gate", "residual-change").cls, {"threshold": 0.2})
    assert isinstance(gate, DBCache) and (gate.fn, gate.bn, gate.warmup) == (1, 0, 0) and gate.DECIDES_AFTER_BLOCK == 0
    assert gate.decide(_ctx(3, 0.1), [False, True]) == [False, True]
    assert gate.decide(_ctx(4, 0.2), [False, True]) == [False, False]  # at the threshold: computes (cache-dit's <)


@pytest.mark.parametrize("fn,bn", [(1, 0), (2, 0), (1, 1)])
def test_dbcache_skips_the_steps_cache_dit_skips_on_flux_tiny(registry, fn, bn):
    cache_dit = pytest.importorskip("cache_dit")
    bench = _Bench.load("flux-tiny")
    transformer, steps, threshold = bench.model.transformer, 12, 0.25
    ours = _strategy(registry, "dbcache", {"fn": fn, "bn": bn, "threshold": threshold, "warmup": 0})
    with adapter_for(transformer).install(transformer, ours):
        mine = bench.call(ours, 0, steps)
    cache_dit.enable_cache(transformer, cache_config=cache_dit.DBCacheConfig(
        Fn_compute_blocks=fn, Bn_compute_blocks=bn, residual_diff_threshold=threshold, max_warmup_steps=0, num_inference_steps=steps,
    ))
    try:
        theirs = bench.call(None, 0, steps)
        (stats,) = cache_dit.summary(transformer)
    finally:
        cache_dit.disable_cache(transformer)
        for module in transformer.modules():
            module.__dict__.pop("forward", None)
        _BENCHES.pop("flux-tiny", None)  # cache-dit leaves state on the model it ran: later tests get a fresh one
    cached = [s for s, row in enumerate(ours.stats.reuse_map) if any(row)]
    assert cached and cached == list(stats.cached_steps)
    blocks = len(ours.stats.reuse_map[cached[0]])
    assert ours.stats.reuse_map[cached[0]] == [0] * fn + [1] * (blocks - fn - bn) + [0] * bn
    assert (mine - theirs).abs().max().item() < 1e-5
    assert torch.equal(bench.call(None, 0, steps), bench.reference(steps))  # cache-dit removed without a trace
