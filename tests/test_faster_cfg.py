"""FasterCache's CFG cache (`faster_cfg`) against diffusers' `FasterCacheDenoiserHook`.

The hook runs where CFG is one batch with the unconditional half first: here it is driven
on wan-tiny by hand in that order (`tensor_format` BCFHW, Wan's layout), with the same
latents, captions and timesteps fed to our cache, which gets the conditional half from the
same batched call on full steps and the conditional-only call on skipped steps, exactly as
the hook does. The operations are the same in the same order (float32 FFT over the same
slices), so the outputs are compared for equality; a mismatch would be a difference in the
rule, not rounding.
"""

from __future__ import annotations

import pytest
import torch

from dqar_bench.core.parts import build_part
from dqar_bench.model import families
from dqar_bench.strategies.caches.faster_attention import FasterAttention
from dqar_bench.strategies.caches.faster_cfg import FasterCfg
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy
from dqar_bench.testing import _Bench


def test_the_cfg_cache_rebuilds_the_unconditional_branch_as_diffusers_hook():
    from diffusers.hooks import FasterCacheConfig, HookRegistry, apply_faster_cache

    bench = _Bench.load("wan-tiny")
    transformer = bench.model.transformer
    config = transformer.config
    g = torch.Generator().manual_seed(0)
    timesteps = [999, 950, 900, 800, 700, 640, 600, 500, 400, 300, 250, 200, 100, 50, 10, 0]
    latents = [torch.randn(1, config.in_channels, 3, 8, 8, generator=g) for _ in timesteps]
    text = torch.randn(1, 8, config.text_dim, generator=g)
    null = torch.zeros_like(text)
    clock = {"t": 0}
    hook_config = FasterCacheConfig(
        spatial_attention_block_skip_range=None, tensor_format="BCFHW", current_timestep_callback=lambda: clock["t"],
        attention_weight_callback=lambda _: 0.5,
    )
    theirs = []
    apply_faster_cache(transformer, hook_config)
    try:
        for t, x in zip(timesteps, latents):
            clock["t"] = t
            out = transformer(hidden_states=torch.cat([x, x]), timestep=torch.tensor([t, t]),
                              encoder_hidden_states=torch.cat([null, text]), return_dict=False)[0]
            theirs.append(out.chunk(2))  # (uncond, cond)
    finally:
        HookRegistry.check_if_exists_or_initialize(transformer).remove_hook("faster_cache_denoiser", recurse=False)
        for m in transformer.modules():
            m.__dict__.pop("_diffusers_hook", None)
            m.__dict__.pop("forward", None)
    ours, cfg, skipped = [], FasterCfg(), []
    for step, (t, x) in enumerate(zip(timesteps, latents)):
        if cfg.skips(step, t):
            cond = transformer(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=text, return_dict=False)[0]
            uncond = cfg.approximate(cond, t)
            skipped.append(step)
        else:
            out = transformer(hidden_states=torch.cat([x, x]), timestep=torch.tensor([t, t]),
                              encoder_hidden_states=torch.cat([null, text]), return_dict=False)[0]
            uncond, cond = out.chunk(2)
            cfg.observe(cond, uncond)
        ours.append((uncond, cond))
    # diffusers' rule: skip where 0 < i, i % 5 != 0 and -1 < t < 641
    assert skipped == [i for i, t in enumerate(timesteps) if i > 0 and i % 5 != 0 and -1 < t < 641]
    for (u, c), (du, dc) in zip(ours, theirs):
        assert torch.equal(c, dc)
        assert torch.equal(u, du)


def _strategy(registry, **cache):
    def part(kind, name, params=None):
        return build_part(registry.get(kind, name).cls, params or {})

    return Strategy(part("scheduler", "timestep-window", {"low": -1, "high": 681}), part("gate", "interval", {"every": 2}),
                    part("cache", "faster-attention", cache), part("quantizer", "none"))


def test_faster_cache_with_its_cfg_cache_skips_the_unconditional_pass_on_wan(registry):
    bench = _Bench.load("wan-tiny")
    transformer, steps = bench.model.transformer, 10
    calls: list[int] = []
    handle = transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        results = {}
        for every in (0, 5):
            calls.clear()
            strategy = _strategy(registry, cfg_every=every)
            seen: list[int] = []
            before = strategy.before_step
            strategy.before_step = lambda ctx, before=before, seen=seen: (seen.append(ctx.timestep), before(ctx))[1]
            with adapter_for(transformer).install(transformer, strategy):
                results[every] = bench.call(strategy, 0, steps)
            results[f"calls{every}"] = len(calls)
    finally:
        handle.remove()
    assert results["calls0"] == 2 * steps and len(seen) == steps
    skipped = 2 * steps - results["calls5"]
    assert 0 < skipped < steps
    assert skipped == sum(1 for i, t in enumerate(seen) if i > 0 and i % 5 != 0 and -1 < t < 641)
    assert not torch.equal(results[0], results[5])
    assert torch.isfinite(results[5]).all()


def test_the_cfg_cache_refuses_families_without_two_passes():
    part = FasterAttention(cfg_every=5)
    assert part.refusal_on(families.get("wan")) is None
    assert "CFG in one batch" in part.refusal_on(families.get("sd3"))
    assert "guidance embedding" in part.refusal_on(families.get("flux"))
    assert FasterAttention().refusal_on(families.get("sd3")) is None
    with pytest.raises(ValueError, match="cfg_every"):
        FasterAttention(cfg_every=-1)
