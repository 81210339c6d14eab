"""The peers on the tiny DiT: each reproduces its defining behaviour.

Which steps a block really computes is read from forward hooks on modules that only run
when it does (`attn1.to_q`, `ff.net[0]`, `norm1`), never from the strategy's own counters.
"""

from __future__ import annotations

import math

import pytest
import torch

from dqar_bench.config.suite import load_suite
from dqar_bench.core.context import StepContext
from dqar_bench.core.parts import build_part
from dqar_bench.model.sampling import make_scheduler, sample
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy
from tests.conftest import SMALL_SUITE_HEAD

LABELS = [1, 3]


def parts(registry, gate, cache, scheduler="all", quantizer="none"):
    def part(kind, spec):
        name, params = (spec, {}) if isinstance(spec, str) else spec
        return build_part(registry.get(kind, name).cls, params)

    return Strategy(part("scheduler", scheduler), part("gate", gate), part("cache", cache), part("quantizer", quantizer))


class StepLog:
    """Per step, which blocks ran a given submodule (hooked on the model, not the strategy)."""

    def __init__(self, model, pick):
        self.step = -1
        self.ran: dict[int, set[int]] = {}
        self._handles = [pick(b).register_forward_hook(self._hook(i)) for i, b in enumerate(model.transformer_blocks)]

    def _hook(self, index):
        def hook(module, args, out):
            self.ran.setdefault(self.step, set()).add(index)

        return hook

    def follow(self, strategy):
        before = strategy.before_step

        def tick(ctx):
            self.step = ctx.step
            before(ctx)

        strategy.before_step = tick

    def computed_steps(self, block):
        return sorted(s for s, blocks in self.ran.items() if block in blocks)

    def close(self):
        for h in self._handles:
            h.remove()


def run(tiny, strategy=None, steps=10, logs=()):
    scheduler = make_scheduler("ddim", tiny.scheduler_config)
    for log in logs:
        log.follow(strategy)
    try:
        with adapter_for(tiny.transformer).install(tiny.transformer, strategy):
            return sample(tiny.transformer, scheduler, LABELS, 0, steps, 4.0, tiny.null_class, observer=strategy)
    finally:
        for log in logs:
            log.close()


def test_fora_recomputes_attention_and_mlp_every_third_step(tiny, registry):
    s = parts(registry, ("interval", {"every": 3}), "attention-mlp-output")
    attention, mlp = StepLog(tiny.transformer, lambda b: b.attn1.to_q), StepLog(tiny.transformer, lambda b: b.ff.net[0])
    norms = StepLog(tiny.transformer, lambda b: b.norm1)
    out = run(tiny, s, logs=(attention, mlp, norms))
    for block in range(tiny.num_blocks):
        assert attention.computed_steps(block) == [0, 3, 6, 9]
        assert mlp.computed_steps(block) == [0, 3, 6, 9]
        assert norms.computed_steps(block) == list(range(10))  # the block's own norms and gates still run
    assert s.stats.reused == 6 * tiny.num_blocks
    assert not torch.equal(out, run(tiny))


@pytest.mark.parametrize("cache", ["attention-mlp-output", "block-residual", "forecast"])
def test_new_caches_without_reuse_equal_the_untouched_model(tiny, registry, cache):
    s = parts(registry, ("interval", {"every": 1}), cache)
    assert torch.equal(run(tiny, s), run(tiny))
    assert s.stats.reused == 0 and s.stats.peak_cache_bytes > 0


def test_first_block_cache_with_threshold_zero_never_skips(tiny, registry):
    s = parts(registry, ("residual-change", {"threshold": 0.0}), "block-residual")
    assert torch.equal(run(tiny, s), run(tiny))
    assert s.stats.reused == 0


def test_first_block_cache_with_a_huge_threshold_skips_all_but_block_zero(tiny, registry):
    s = parts(registry, ("residual-change", {"threshold": 1e9}), "block-residual")
    seen = []
    decide = s.gate.decide
    s.gate.decide = lambda ctx, eligible: seen.append((ctx.step, ctx.signals["residual_change"], list(eligible))) or decide(ctx, eligible)
    blocks = StepLog(tiny.transformer, lambda b: b.norm1)
    run(tiny, s, logs=(blocks,))
    assert blocks.computed_steps(0) == list(range(10))  # block 0 always runs: it is the probe
    for block in range(1, tiny.num_blocks):
        assert blocks.computed_steps(block) == [0]  # everything after it reuses from step 1 on
    assert seen[0][0] == 1 and seen[0][2] == [False] + [True] * (tiny.num_blocks - 1)
    assert all(0 < change < math.inf for _, change, _ in seen)
    assert s.stats.reused == 9 * (tiny.num_blocks - 1)


def test_first_block_cache_measures_against_the_last_full_step(tiny, registry):
    """The reference residual is block 0's at the last step where every block ran."""
    s = parts(registry, ("residual-change", {"threshold": 1e9}), "block-residual")
    residuals = []
    handle = tiny.transformer.transformer_blocks[0].register_forward_hook(lambda m, a, out: residuals.append(out - a[0]))
    changes = []
    decide = s.gate.decide
    s.gate.decide = lambda ctx, eligible: changes.append(ctx.signals["residual_change"]) or decide(ctx, eligible)
    try:
        run(tiny, s, steps=4)
    finally:
        handle.remove()
    reference = residuals[0]  # step 0 is the only full step
    for step in (1, 2, 3):
        expected = ((residuals[step] - reference).abs().mean() / reference.abs().mean()).item()
        assert changes[step - 1] == pytest.approx(expected, rel=1e-5)


def test_a_reused_block_adds_its_stored_residual_to_its_current_input(tiny, registry):
    s = parts(registry, ("interval", {"every": 2}), "block-residual")
    block = tiny.transformer.transformer_blocks[1]
    seen = []
    handle = block.register_forward_hook(lambda m, a, out: seen.append((a[0].clone(), out.clone())))
    try:
        run(tiny, s, steps=2)
    finally:
        handle.remove()
    (in0, out0), (in1, out1) = seen
    assert not torch.equal(in0, in1)
    torch.testing.assert_close(out1, in1 + (out0 - in0))


def test_taylorseer_cadence_and_forecast_in_the_model(tiny, registry):
    s = parts(registry, ("warmup-interval", {"every": 4, "warmup": 2}), ("forecast", {"order": 2}))
    attention = StepLog(tiny.transformer, lambda b: b.attn1.to_q)
    out = run(tiny, s, logs=(attention,))
    assert attention.computed_steps(0) == [0, 1, 5, 9]  # the official DiT schedule: 2 full steps, then every 4th
    plain = parts(registry, ("warmup-interval", {"every": 4, "warmup": 2}), ("forecast", {"order": 0}))
    assert not torch.equal(out, run(tiny, plain))  # the expansion really changes what is given back


def forecast_cache(registry, order, blocks=1):
    cache = build_part(registry.get("cache", "forecast").cls, {"order": order})
    cache.quantizer = build_part(registry.get("quantizer", "none").cls, {})
    cache.clear()
    cache.begin(blocks, torch.device("cpu"))
    return cache


def drive(cache, feature, computes, steps):
    """Store `feature(t)` where computing, forecast elsewhere; the forecasts by step."""
    out = {}
    like = torch.zeros(2, 3)
    for t in range(steps):
        compute = t in computes
        cache.begin_step(t, [compute])
        if compute:
            cache.store(0, feature(t), None)
        else:
            out[t] = cache.reuse(0, torch.nn.Identity(), like)
    return out


@pytest.mark.parametrize("order", [1, 2, 4])
def test_taylorseer_forecast_of_a_linear_feature_is_exact(registry, order):
    a, b = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    feature = lambda t: (a + b * t).float()  # noqa: E731
    forecasts = drive(forecast_cache(registry, order), feature, computes={0, 1, 5, 9}, steps=12)
    for t in (6, 7, 8, 10, 11):  # after two computations the slope is known
        torch.testing.assert_close(forecasts[t], feature(t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(forecasts[2], feature(2), rtol=1e-5, atol=1e-5)


def test_taylorseer_order_zero_is_plain_reuse(registry):
    feature = lambda t: torch.full((2, 3), float(t * t))  # noqa: E731
    forecasts = drive(forecast_cache(registry, 0), feature, computes={0, 4}, steps=7)
    assert torch.equal(forecasts[3], feature(0)) and torch.equal(forecasts[6], feature(4))


def official_taylorseer(feature, computes, steps, order):
    """TaylorSeer's recursion as its DiT code writes it (dict of factors, x^i / i!)."""
    factors: dict[int, torch.Tensor] = {}
    activated: list[int] = []
    out = {}
    for t in range(steps):
        if t in computes:
            new = {0: feature(t)}
            if activated:
                gap = t - activated[-1]
                for i in range(order):
                    if i not in factors:
                        break
                    new[i + 1] = (new[i] - factors[i]) / gap
            factors = new
            activated.append(t)
        else:
            x = t - activated[-1]
            out[t] = sum(f * x**i / math.factorial(i) for i, f in factors.items())
    return out


@pytest.mark.parametrize("order", [2, 3])
def test_taylorseer_forecast_matches_the_official_recursion(registry, order):
    torch.manual_seed(0)
    table = torch.randn(16, 2, 3)
    feature = lambda t: table[t]  # noqa: E731
    computes = {0, 1, 5, 9, 13}
    ours = drive(forecast_cache(registry, order), feature, computes, 16)
    theirs = official_taylorseer(feature, computes, 16, order)
    assert set(ours) == set(theirs)
    for t in theirs:
        torch.testing.assert_close(ours[t], theirs[t], rtol=1e-5, atol=1e-5)


def test_delta_dit_mask_has_the_papers_layout(registry):
    scheduler = build_part(registry.get("scheduler", "front-rear").cls, {"blocks": 0.5, "boundary": 0.5})
    T, F = True, False
    expected = [[F, F, T, T], [F, F, T, T], [T, T, F, F], [T, T, F, F]]  # rear blocks early, front blocks late
    assert scheduler.mask(4, 4).tolist() == expected
    paper = build_part(registry.get("scheduler", "front-rear").cls, {}).mask(20, 28)
    assert paper[:8].sum(dim=0).tolist() == [0] * 7 + [8] * 21  # first 40 %: the rear 21 of 28 blocks
    assert paper[8:].sum(dim=0).tolist() == [12] * 21 + [0] * 7  # then the front 21


def test_delta_dit_in_the_model_skips_the_rear_early_and_the_front_late(tiny, registry):
    s = parts(registry, ("interval", {"every": 2}), "block-residual", scheduler=("front-rear", {"blocks": 0.5, "boundary": 0.5}))
    blocks = StepLog(tiny.transformer, lambda b: b.norm1)
    run(tiny, s, steps=8, logs=(blocks,))
    early_odd, late_odd = {1, 3}, {5, 7}
    for block in (0, 1):  # front: reused only late
        assert set(range(8)) - set(blocks.computed_steps(block)) == late_odd
    for block in (2, 3):  # rear: reused only early
        assert set(range(8)) - set(blocks.computed_steps(block)) == early_odd


def test_pab_broadcasts_only_inside_its_timestep_window(tiny, registry):
    s = parts(registry, ("interval", {"every": 2}), "attention-output", scheduler=("timestep-window", {"low": 100, "high": 800}))
    timesteps = []
    before = s.before_step
    s.before_step = lambda ctx: timesteps.append(ctx.timestep) or before(ctx)
    attention = StepLog(tiny.transformer, lambda b: b.attn1.to_q)
    run(tiny, s, logs=(attention,))
    reused = set(range(10)) - set(attention.computed_steps(0))
    assert reused == {i for i, t in enumerate(timesteps) if 100 < t < 800 and i % 2 == 1}
    assert reused and any(i % 2 == 1 for i, t in enumerate(timesteps) if not 100 < t < 800)  # odd steps outside compute


def test_timestep_window_reads_the_samplers_timesteps(registry):
    window = build_part(registry.get("scheduler", "timestep-window").cls, {})
    window.timesteps = [999, 750, 500, 250, 50]
    assert window.mask(5, 2)[:, 0].tolist() == [False, True, True, True, False]
    window.timesteps = None  # outside a sampling call: DDIM's leading spacing is assumed
    assert window.mask(10, 1)[:, 0].tolist() == [False, False, True, True, True, True, True, True, False, False]


def test_mid_forward_gate_needs_a_block_cache(registry, write_suite):
    from dqar_bench.core.errors import SuiteError

    with pytest.raises(ValueError, match="target is 'block'"):
        parts(registry, "residual-change", "attention-output")
    path = write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: fbc\n    gate: residual-change\n")
    with pytest.raises(SuiteError) as err:
        load_suite(path, registry)
    assert "\n" not in str(err.value) and "block-residual" in str(err.value) and "case 'fbc'" in str(err.value)


def test_adapter_patches_each_target_and_leaves_the_model_as_it_was(tiny, registry):
    model = tiny.transformer
    state = {k: v.clone() for k, v in model.state_dict().items()}
    checks = {
        "attention-mlp-output": lambda b: ("forward" in b.attn1.__dict__, "forward" in b.ff.__dict__, "forward" in b.__dict__),
        "block-residual": lambda b: ("forward" in b.attn1.__dict__, "forward" in b.ff.__dict__, "forward" in b.__dict__),
    }
    expected = {"attention-mlp-output": (True, True, False), "block-residual": (False, False, True)}
    for cache, check in checks.items():
        with adapter_for(model).install(model, parts(registry, "never", cache)):
            assert all(check(b) == expected[cache] for b in model.transformer_blocks)
        assert all(check(b) == (False, False, False) for b in model.transformer_blocks)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_reuse_is_counted_per_step_from_the_decision(registry):
    """Counting and what a cache holds live outside the forward (a replayed CUDA graph runs no Python)."""
    s = parts(registry, ("interval", {"every": 2}), "attention-output")
    s.begin(4, 3, torch.device("cpu"))
    latents = torch.zeros(1, 4, 2, 2)
    for step in range(4):
        s.before_step(StepContext(step, 4, 999 - step, latents))
        s.after_step()  # as after a replay: no store ran, the bookkeeping still knows what was computed
    assert (s.stats.evaluations, s.stats.reused) == (12, 6)
