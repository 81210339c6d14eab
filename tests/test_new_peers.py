"""TeaCache, MagCache and FasterCache's attention reuse against their references.

TeaCache: the signal is block 0's modulated input as TeaCache4FLUX computes it, and the
decisions follow its loop (np.poly1d rescale, accumulate, reset), written here from the
reference script. MagCache: the same steps skip as diffusers' `MagCacheHeadHook` at the
same settings, with outputs equal up to float rounding (a sum of per-block residuals
against the stack's). FasterCache: our `faster-attention` cache with the interval gate
and timestep window gives the same bits as diffusers' `FasterCacheBlockHook` (attention
part, `is_guidance_distilled`) on the tiny FLUX.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import SuiteError
from dqar_bench.core.parts import build_part
from dqar_bench.model import families
from dqar_bench.strategies.gates.magnitude import FLUX_MAG_RATIOS, Magnitude, magnitude_ratios, nearest_interp
from dqar_bench.strategies.gates.teacache import TeaCache, polynomial
from dqar_bench.strategy import signals
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.diffusers_hooks import DiffusersHook, check
from dqar_bench.strategy.strategy import Strategy
from dqar_bench.testing import _Bench


def assemble(registry, gate, cache="block-residual", scheduler="all") -> Strategy:
    def part(kind, spec):
        name, params = (spec, {}) if isinstance(spec, str) else spec
        return build_part(registry.get(kind, name).cls, params)

    return Strategy(part("scheduler", scheduler), part("gate", gate), part("cache", cache), part("quantizer", "none"))


def test_polynomial_is_numpy_poly1d():
    coefficients = families.get("flux").modulation.coefficients
    for x in (0.0, 0.05, 0.3, 1.7):
        assert polynomial(coefficients, x) == pytest.approx(float(np.poly1d(coefficients)(x)), rel=1e-12)


def test_teacache_reads_block_zeros_modulated_input_and_decides_as_the_reference(registry):
    bench = _Bench.load("flux-tiny")
    transformer = bench.model.transformer
    steps = 12
    s = assemble(registry, ("teacache", {"threshold": 0.5}))
    seen: list[tuple[int, float, list[bool]]] = []
    decide = s.gate.decide

    def watch(ctx, eligible):
        answer = decide(ctx, eligible)
        seen.append((ctx.step, ctx.signals[signals.MODULATION_CHANGE], list(answer)))
        return answer

    s.gate.decide = watch
    recorded: list[torch.Tensor] = []
    block0 = transformer.transformer_blocks[0]
    handle = block0.register_forward_pre_hook(
        lambda m, a, k: recorded.append(m.norm1(k["hidden_states"], emb=k["temb"])[0].detach()), with_kwargs=True
    )
    try:
        with adapter_for(transformer).install(transformer, s):
            out = bench.call(s, 0, steps)
    finally:
        handle.remove()
    assert len(recorded) == steps  # one forward per step (embedded guidance), block 0 always entered
    # the signal: TeaCache4FLUX's relative L1 change of norm1(inp, emb=temb)[0] since the previous step
    expected = [float((recorded[t] - recorded[t - 1]).abs().mean() / recorded[t - 1].abs().mean()) for t in range(1, steps)]
    assert [round(c, 5) for _, c, _ in seen] == [round(c, 5) for c in expected]
    # the decisions: the reference's loop over the same changes
    coefficients = families.get("flux").modulation.coefficients
    rescale, acc, calc = np.poly1d(coefficients), 0.0, []
    for cnt in range(steps):
        if cnt == 0 or cnt == steps - 1:
            calc.append(True)
            acc = 0.0
            continue
        acc += rescale(expected[cnt - 1])
        if acc < 0.5:
            calc.append(False)
        else:
            calc.append(True)
            acc = 0.0
    skipped = [t for t in range(steps) if not calc[t]]
    assert skipped and [t for t, _, answer in seen if all(answer)] == skipped
    assert all(not any(answer) for t, _, answer in seen if t not in skipped)
    assert s.stats.reused == len(skipped) * bench.model.num_blocks  # a skip reuses the whole stack
    assert torch.isfinite(out).all()


def test_teacache_coefficients_default_to_the_familys_and_a_suite_may_override(registry):
    gate = TeaCache()
    gate.bind_family(families.get("hunyuan-video"))
    assert gate.rescale == families.get("hunyuan-video").modulation.coefficients
    gate.bind_family(families.get("dit"))
    assert gate.rescale == (1.0, 0.0)  # TeaCache publishes no fit for DiT
    assert TeaCache(coefficients=[2.0, 0.0]).rescale == (2.0, 0.0)


def test_a_family_without_modulation_refuses_teacache_in_one_line(registry):
    bare = dataclasses.replace(families.get("dit"), modulation="block 0 has no timestep modulation")
    reason = bare.refusal(TeaCache)
    assert reason and "\n" not in reason and "no timestep modulation" in reason and "'dit'" in reason
    assert all(isinstance(f.modulation, families.Modulation) for f in families.FAMILIES)


def test_teacache_and_magcache_need_a_block_cache(registry, write_suite):
    path = write_suite("""\
        name: x
        model: dit-tiny
        sampler: {name: ddim, steps: 4}
        cases:
          - name: baseline
          - name: tea
            gate: teacache
    """)
    with pytest.raises(SuiteError, match="decides before block 0, from its modulated input, so it needs a cache whose target is 'block'"):
        load_suite(path, registry)


def test_magcache_skips_as_the_reference_loop():
    gate = Magnitude(threshold=0.24, max_skip_steps=5, retention_ratio=0.1, protected_steps=[])
    skips = gate.skips(28)
    # the reference script's loop over FLUX's ratios, without its "never step 11" rule (tests/test_peer_policies.py has it)
    ratio, count, err, ref = 1.0, 0, 0.0, []
    for cnt in range(28):
        skip = False
        if cnt >= int(0.1 * 28 + 0.5):
            ratio *= FLUX_MAG_RATIOS[cnt]
            count += 1
            err += abs(1 - ratio)
            if err <= 0.24 and count <= 5:
                skip = True
            else:
                ratio, count, err = 1.0, 0, 0.0
        ref.append(skip)
    assert skips == ref and any(skips)
    assert nearest_interp(FLUX_MAG_RATIOS, 28) == list(FLUX_MAG_RATIOS)
    assert len(nearest_interp(FLUX_MAG_RATIOS, 10)) == 10 and nearest_interp(FLUX_MAG_RATIOS, 10)[-1] == FLUX_MAG_RATIOS[-1]


def test_magcache_skips_the_steps_diffusers_hook_skips(registry):
    bench = _Bench.load("dit-tiny")
    transformer = bench.model.transformer
    steps = 20
    settings = {"threshold": 0.3, "max_skip_steps": 3, "retention_ratio": 0.2}
    ours = assemble(registry, ("magnitude", {**settings, "protected_steps": []}))
    with adapter_for(transformer).install(transformer, ours):
        mine = bench.call(ours, 0, steps)
    hook = DiffusersHook(check({"name": "mag-cache", **settings, "mag_ratios": "flux"}, steps))
    with hook.install(transformer):
        theirs = bench.call(hook, 0, steps)
    ours_rows = [any(row) for row in ours.stats.reuse_map]
    their_rows = [row[1:] != [0] * (len(row) - 1) for row in hook.stats.reuse_map]  # the head block always runs there
    assert any(ours_rows) and ours_rows == their_rows
    assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5)  # per-block residual sums vs the stack's


def test_magnitude_ratios_calibrate_on_the_untouched_model():
    bench = _Bench.load("dit-tiny")
    ratios = magnitude_ratios(bench.model.transformer, lambda: bench.call(None, 0, 8))
    assert len(ratios) == 8 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert not any("forward" in m.__dict__ for m in bench.model.transformer.modules())


@pytest.mark.parametrize("model,family,steps", [("flux-tiny", "flux", 10), ("digits-dit", "dit", 20)])
def test_faster_attention_gives_diffusers_faster_cache_bits(registry, model, family, steps):
    """DDIM's last timestep is 0: both windows (-1, 681) hold it."""
    bench = _Bench.load(model)
    transformer = bench.model.transformer
    ours = assemble(registry, ("interval", {"every": 2}), ("faster-attention", {"weight": 0.5, "history": "outputs"}), ("timestep-window", {"low": -1, "high": 681}))
    with adapter_for(transformer).install(transformer, ours):
        mine = bench.call(ours, 0, steps)
    hook = DiffusersHook(check({"name": "faster-cache", "is_guidance_distilled": True}, steps))
    with hook.install(transformer):
        theirs = bench.call(hook, 0, steps)
    assert ours.stats.reused > 0 and not torch.equal(mine, bench.reference(steps))
    assert torch.equal(mine, theirs)
    assert ours.stats.reuse_map == hook.stats.reuse_map


def test_faster_attention_history_computed_extrapolates_from_the_last_two_computed(registry):
    """The authors' code: extrapolations are not kept; `outputs` (diffusers) keeps them."""
    from dqar_bench.strategy.storage import unpack

    def cache(history):
        c = build_part(registry.get("cache", "faster-attention").cls, {"history": history})
        c.quantizer = build_part(registry.get("quantizer", "none").cls, {})
        return c

    x = torch.zeros(1, 2, 3)
    for history, third in (("computed", 4.0 + (4.0 - 1.0) * 0.5), ("outputs", 5.5 + (5.5 - 4.0) * 0.5)):
        c = cache(history)
        c.store(0, x + 1.0, None)
        c.store(0, x + 4.0, None)
        assert torch.equal(c.reuse(0, None, x), x + 5.5)  # 4 + (4 - 1) / 2
        assert torch.equal(c.reuse(0, None, x), x + third)
        assert torch.equal(unpack(c._held[0][1], x.dtype), x + (4.0 if history == "computed" else third))
