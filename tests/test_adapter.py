"""The adapter and strategy runtime on the tiny DiT: exactness, clean removal, counting."""

from __future__ import annotations

import pytest
import torch

from dqar_bench.core.parts import build_part
from dqar_bench.model.sampling import make_scheduler, sample
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy

LABELS = [1, 3]
STEPS = 10


def run(tiny, strategy=None, steps=STEPS):
    scheduler = make_scheduler("ddim", tiny.scheduler_config)
    with adapter_for(tiny.transformer).install(tiny.transformer, strategy):
        return sample(tiny.transformer, scheduler, LABELS, 0, steps, 4.0, tiny.null_class, observer=strategy)


def strategy(registry, gate="never", cache="attention-output", **gate_params):
    part = lambda kind, name, **p: build_part(registry.get(kind, name).cls, p)  # noqa: E731
    return Strategy(part("scheduler", "all"), part("gate", gate, **gate_params), part("cache", cache), part("quantizer", "none"))


def test_install_then_remove_leaves_model_bit_identical(tiny, registry):
    before = run(tiny)
    attn = [b.attn1 for b in tiny.transformer.transformer_blocks]
    state = {k: v.clone() for k, v in tiny.transformer.state_dict().items()}
    reusing = run(tiny, strategy(registry, "interval", every=3))
    assert not torch.equal(reusing, before)  # the strategy really changed the computation
    assert all("forward" not in a.__dict__ for a in attn)
    after = run(tiny)
    assert torch.equal(after, before)
    assert all(torch.equal(v, state[k]) for k, v in tiny.transformer.state_dict().items())


def test_removal_happens_even_when_sampling_raises(tiny, registry):
    s = strategy(registry)

    def boom(*a, **k):
        raise RuntimeError("boom")

    s.gate.decide = boom
    with pytest.raises(RuntimeError):
        run(tiny, s)
    assert all("forward" not in b.attn1.__dict__ for b in tiny.transformer.transformer_blocks)


def test_interval_one_equals_baseline_exactly(tiny, registry):
    assert torch.equal(run(tiny, strategy(registry, "interval", every=1)), run(tiny))


def test_harness_own_attention_path_is_exact(tiny, registry):
    """Probing entropy makes every block go through the harness's own attention code."""
    s = strategy(registry)
    s.gate.SIGNALS = frozenset({"entropy"})  # instance override: forces the own path
    assert s.probes_entropy
    assert torch.equal(run(tiny, s), run(tiny))
    assert s.stats.reused == 0


def test_reuse_ratio_on_a_known_schedule(tiny, registry):
    s = strategy(registry, "interval", every=3)
    run(tiny, s)
    blocks = tiny.num_blocks
    # steps 0, 3, 6, 9 compute; the six others reuse every block
    assert s.stats.evaluations == STEPS * blocks
    assert s.stats.reused == 6 * blocks
    assert s.stats.reuse_ratio == pytest.approx(0.6)


def test_cache_bytes_are_the_bytes_held(tiny, registry):
    s = strategy(registry, "interval", every=2)
    run(tiny, s)
    tokens = (tiny.sample_size // 2) ** 2
    width = tiny.transformer.inner_dim
    batch = 2 * len(LABELS)  # classifier-free guidance doubles the batch
    assert s.stats.peak_cache_bytes == tiny.num_blocks * batch * tokens * width * 4


def test_gate_sees_context_and_signals(tiny, registry):
    seen = []
    s = strategy(registry)
    s.gate.SIGNALS = frozenset({"snr", "latent_norm", "entropy"})
    s.gate.snr = "x0"  # the seed's SNR, from the sampler's x0 (the default, the schedule's, needs no x0)

    def decide(ctx, eligible):
        seen.append((ctx.step, ctx.num_steps, ctx.x0 is not None, dict(ctx.signals)))
        return [False] * len(eligible)

    s.gate.decide = decide
    run(tiny, s, steps=4)
    assert [x[0] for x in seen] == [1, 2, 3]  # nothing is cached before step 1
    step, num_steps, has_x0, signals = seen[0]
    assert num_steps == 4 and has_x0
    assert signals["snr"] > 0 and signals["latent_norm"] > 0
    assert len(signals["entropy"]) == tiny.num_blocks
    assert all(0 < h <= torch.log(torch.tensor(16.0)).item() + 1e-5 for h in signals["entropy"])
