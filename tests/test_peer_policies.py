"""The peers' official per-model policies, against loops written here from the official code.

MagCache: `MagCache4FLUX/magcache_flux.py` lines 326-338 (with its "never step 11 of 28"
rule) and `MagCache4Wan2.1/magcache_generate.py` lines 277-292 (one accumulator per CFG
branch over interleaved ratios, strict `<`, retention counted in calls), Zehong-Ma/MagCache
at df81cb18. TeaCache: `TeaCache4Wan2.1/teacache_generate.py` lines 519-550 and 881-894
(ali-vilab/TeaCache at 7c10efc4). The ratios and signals are measured on the tiny model of
the family in the test itself, so nothing recorded elsewhere is compared.
"""

from __future__ import annotations

import numpy as np
import pytest

from dqar_bench.core.parts import build_part
from dqar_bench.model import families
from dqar_bench.strategies.gates.magnitude import FLUX_MAG_RATIOS, Magnitude, magnitude_ratios
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy
from dqar_bench.testing import _Bench


def assemble(registry, gate, cache="block-residual") -> Strategy:
    def part(kind, spec):
        name, params = (spec, {}) if isinstance(spec, str) else spec
        return build_part(registry.get(kind, name).cls, params)

    return Strategy(part("scheduler", "all"), part("gate", gate), part("cache", cache), part("quantizer", "none"))


def official_flux(mag_ratios, num_steps, thresh=0.24, K=5, retention_ratio=0.1):
    """MagCache4FLUX's loop (lines 326-338), its ratios resampled by its nearest_interp."""
    scale = (len(mag_ratios) - 1) / (num_steps - 1)
    ratios = np.array(mag_ratios)[np.round(np.arange(num_steps) * scale).astype(int)]
    acc_ratio, acc_steps, acc_err, out = 1.0, 0, 0.0, []
    for cnt in range(num_steps):
        skip = False
        if cnt >= int(retention_ratio * num_steps + 0.5):
            acc_ratio *= ratios[cnt]
            acc_steps += 1
            acc_err += np.abs(1 - acc_ratio)
            if acc_err <= thresh and acc_steps <= K and np.round(cnt * ((28 - 1) / (num_steps - 1))).astype(int) != 11:
                skip = True
            else:
                acc_ratio, acc_steps, acc_err = 1.0, 0, 0.0
        out.append(skip)
    return out


@pytest.mark.parametrize("steps", [28, 20, 50])
def test_magcache_defaults_skip_as_the_official_flux_script(steps):
    ours = Magnitude().skips(steps)
    assert ours == official_flux(FLUX_MAG_RATIOS, steps) and any(ours)
    protected = int(np.round(11 * (steps - 1) / 27))  # the step that maps to 11 of 28 (exactly, at these counts)
    assert not ours[protected]
    assert Magnitude(protected_steps=[]).skips(28)[11]  # without the rule, step 11 of 28 skips


def official_wan(interleaved, num_calls, thresh=0.12, K=2, retention_ratio=0.2):
    """MagCache4Wan2.1's loop (lines 277-292) over its 2n calls: skip per call."""
    acc_ratio, acc_steps, acc_err, out = [1.0, 1.0], [0, 0], [0.0, 0.0], []
    for cnt in range(num_calls):
        skip = False
        if cnt >= int(num_calls * retention_ratio):
            b = cnt % 2
            acc_ratio[b] *= interleaved[cnt]
            acc_steps[b] += 1
            acc_err[b] += np.abs(1 - acc_ratio[b])
            if acc_err[b] < thresh and acc_steps[b] <= K:
                skip = True
            else:
                acc_err[b], acc_steps[b], acc_ratio[b] = 0, 0, 1.0
        out.append(skip)
    return out


def test_magcache_on_wan_keeps_ratios_and_accumulators_per_cfg_branch(registry):
    bench = _Bench.load("wan-tiny")
    transformer, steps = bench.model.transformer, 12
    cond, uncond = magnitude_ratios(transformer, lambda: bench.call(None, 0, steps), branches=2)
    mixed = magnitude_ratios(transformer, lambda: bench.call(None, 0, steps))
    assert len(cond) == len(uncond) == steps and cond[0] == uncond[0] == 1.0
    assert len(mixed) == 2 * steps and mixed != [r for pair in zip(cond, uncond) for r in pair]  # the old, mixed ratios differ
    # the official calibration's list: [1.0]*2 + [c1, u1, c2, u2, ...]; its loop at its argparse defaults
    interleaved = [r for pair in zip(cond, uncond) for r in pair]
    calls = official_wan(interleaved, 2 * steps, thresh=0.12, K=2, retention_ratio=0.2)
    settings = {"mag_ratios": [cond, uncond], "threshold": 0.12, "max_skip_steps": 2, "retention_ratio": 0.2, "strict": True, "protected_steps": []}
    gate = Magnitude(**settings)
    assert gate.branch_skips(steps) == [calls[0::2], calls[1::2]] and any(calls)
    # the run: each branch reuses at the steps the official loop skips it
    strategy = assemble(registry, ("magnitude", settings))
    seen: list[list[bool]] = []
    after = strategy.after_step
    strategy.after_step = lambda: (seen.append([any(r) for r in strategy._reuses]), after())[1]
    with adapter_for(transformer).install(transformer, strategy):
        bench.call(strategy, 0, steps)
    assert seen == [[c, u] for c, u in zip(calls[0::2], calls[1::2])]


def test_magcache_refuses_another_familys_default_ratios():
    gate = Magnitude()
    assert gate.refusal_on(families.get("flux")) is None
    assert "FLUX.1-dev's published ratios" in gate.refusal_on(families.get("wan"))
    assert Magnitude(mag_ratios="flux").refusal_on(families.get("wan")) is None
    assert Magnitude(mag_ratios=[1.0, 0.9]).refusal_on(families.get("sd3")) is None


def official_teacache_wan(inputs, coefficients, thresh, ret_steps, cutoff_steps):
    """TeaCache4Wan2.1's decision (lines 519-550) over the 2n calls: compute per call."""
    acc, previous, out = [0.0, 0.0], [None, None], []
    for cnt, inp in enumerate(inputs):
        b = cnt % 2
        if cnt < ret_steps or cnt >= cutoff_steps:
            calc, acc[b] = True, 0.0
        else:
            acc[b] += np.poly1d(coefficients)(((inp - previous[b]).abs().mean() / previous[b].abs().mean()).cpu().item())
            calc = not acc[b] < thresh
            if calc:
                acc[b] = 0.0
        previous[b] = inp.clone()
        out.append(calc)
    return out


@pytest.mark.parametrize("mode", [None, "e"])
def test_teacache_on_wan_skips_as_the_official_script_in_each_mode(registry, mode):
    """Retention mode (use_ret_steps: e0, ret_steps 5*2, cutoff 2n; lines 881-887) and `e` mode
    (ret_steps 1*2, cutoff 2n - 2; lines 888-894), each at its fit, on wan-tiny."""
    bench = _Bench.load("wan-tiny")
    transformer, steps = bench.model.transformer, 12
    wan = families.get("wan")
    fit = wan.modulation if mode is None else wan.modulation_modes["e"]
    inputs: list = []
    if mode is None:  # e0: block 0's temb argument
        handle = transformer.blocks[0].register_forward_pre_hook(lambda m, a, k: inputs.append(k.get("temb", a[2] if len(a) > 2 else None)), with_kwargs=True)
    else:  # e: the time embedding, before the per-block projection
        handle = transformer.condition_embedder.time_embedder.register_forward_hook(lambda m, a, out: inputs.append(out))
    try:
        bench.call(None, 0, steps)
    finally:
        handle.remove()
    assert len(inputs) == 2 * steps and all(x is not None for x in inputs)
    ret, cutoff = (5 * 2, 2 * steps) if mode is None else (1 * 2, 2 * steps - 2)
    changes = [((inputs[c] - inputs[c - 2]).abs().mean() / inputs[c - 2].abs().mean()).item() for c in range(2, 2 * steps, 2)]
    rescaled = [float(np.poly1d(fit.coefficients)(x)) for x in changes]
    if mode is None:
        # the published default (--teacache_thresh 0.2); the 1.3B e0 fit is negative at every change of this
        # random model, so every step after the 5 retained ones skips, the last one too
        thresh = 0.2
        assert all(r < 0 for r in rescaled)
    else:  # between the rescaled changes (all positive here), so that the loop both skips and computes
        thresh = float(np.median(rescaled)) * 1.5
    calls = official_teacache_wan(inputs, fit.coefficients, thresh, ret, cutoff)
    assert calls[0::2] == calls[1::2]  # both branches see the same e0 / e: one decision is the reference's
    strategy = assemble(registry, ("teacache", {"threshold": thresh, **({"mode": mode} if mode else {})}))
    with adapter_for(transformer).install(transformer, strategy):
        bench.call(strategy, 0, steps)
    ours = [any(row) for row in strategy.stats.reuse_map]
    assert ours == [not c for c in calls[0::2]]
    if mode is None:  # FLUX's policy (1 warm-up step, last forced) would skip 1..10 here
        assert ours == [False] * 5 + [True] * (steps - 5)
    else:
        assert not ours[0] and not ours[-1] and any(ours) and not all(ours[1:-1])


def test_teacache_on_cogvideox_takes_the_fit_of_its_structure(registry):
    """Rotary embeddings: CogVideoX-5b's fit (teacache_sample_video.py line 11); none: 2b's (line 10);
    and on cogvideox-tiny (rotary) the gate skips the steps of the reference's loop (lines 71-81)."""
    cog = families.get("cogvideox")
    assert cog.modulation_for(None, {"use_rotary_positional_embeddings": True}).coefficients[0] == pytest.approx(-1.53880483e03)
    assert cog.modulation_for(None, {"use_rotary_positional_embeddings": False}).coefficients[0] == pytest.approx(-3.10658903e01)
    assert cog.modulation_for(None, {"use_rotary_positional_embeddings": True, "patch_size_t": 2}).coefficients[0] == pytest.approx(2.50210439e02)
    bench = _Bench.load("cogvideox-tiny")
    transformer, steps = bench.model.transformer, 10
    assert transformer.config.use_rotary_positional_embeddings
    coefficients = cog.modulation_for(None, dict(transformer.config)).coefficients
    emb: list = []
    handle = transformer.transformer_blocks[0].register_forward_pre_hook(lambda m, a, k: emb.append(k.get("temb", a[2] if len(a) > 2 else None)), with_kwargs=True)
    try:
        bench.call(None, 0, steps)
    finally:
        handle.remove()
    changes = [((emb[t] - emb[t - 1]).abs().mean() / emb[t - 1].abs().mean()).item() for t in range(1, steps)]
    thresh = float(np.median([abs(np.poly1d(coefficients)(x)) for x in changes])) * 1.5
    acc, skips = 0.0, []
    for cnt in range(steps):
        if cnt == 0 or cnt == steps - 1:
            calc, acc = True, 0.0
        else:
            acc += np.poly1d(coefficients)(changes[cnt - 1])
            calc = not acc < thresh
            acc = 0.0 if calc else acc
        skips.append(not calc)
    strategy = assemble(registry, ("teacache", {"threshold": thresh}))
    with adapter_for(transformer).install(transformer, strategy):
        bench.call(strategy, 0, steps)
    assert strategy.gate.rescale == tuple(coefficients)
    assert [any(row) for row in strategy.stats.reuse_map] == skips and any(skips) and not skips[-1]


def test_teacache_refuses_a_family_without_a_published_fit_unless_given_one():
    from dqar_bench.strategies.gates.teacache import TeaCache

    assert "publishes no rescale fit for family 'sd3'" in TeaCache().refusal_on(families.get("sd3"))
    assert TeaCache(coefficients=[1.0, 0.0]).refusal_on(families.get("sd3")) is None
    assert TeaCache().refusal_on(families.get("flux")) is None
    assert "no TeaCache mode 'e'" in TeaCache(mode="e").refusal_on(families.get("flux"))
    assert TeaCache(mode="e").refusal_on(families.get("wan")) is None


def test_a_fit_of_another_family_is_recorded_unsupported_with_its_reason(write_suite, tmp_path):
    """peers-flow's rule: MagCache with FLUX's ratios and TeaCache without a published fit do not run on SD3."""
    from dqar_bench.cli import main
    from dqar_bench.measure.records import RunDir

    path = write_suite("""\
name: fits
model: sd3-tiny
sampler: {name: flow-euler, steps: 3, guidance_scale: 4.0}
prompt_lengths: [8]
seeds: [0]
device: cpu
dtype: float32
timing: {warmup: 0, repeats: 1}
baseline: baseline
cases:
  - name: baseline
  - name: magcache
    gate: magnitude
    cache: block-residual
  - name: teacache
    gate: teacache
    cache: block-residual
  - name: teacache_raw
    gate: {name: teacache, coefficients: [1.0, 0.0], threshold: 0.3}
    cache: block-residual
""")
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 0
    records = {r.case: r for r in RunDir(tmp_path / "run").records()}
    assert records["magcache"].status == "unsupported"
    assert records["magcache"].error.startswith("unsupported on family 'sd3': gate 'magnitude' without 'mag_ratios'")
    assert records["teacache"].status == "unsupported" and "publishes no rescale fit for family 'sd3'" in records["teacache"].error
    assert records["teacache_raw"].status == "ok"
