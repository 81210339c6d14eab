"""PAB's cross-attention broadcast: cache `cross-attention-output` on the families that have one.

What the model really recomputed is read from forward hooks on each block's
`attn2.to_q`, which runs only when the cross-attention computes; the reference is
diffusers' `PyramidAttentionBroadcastHook` with `cross_attention_block_skip_range` N and
`cross_attention_timestep_skip_range` (low, high) on the sampler's own timesteps
(`tests.test_fidelity.pab_reference`).
"""

from __future__ import annotations

import pytest
import torch

from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import SuiteError
from dqar_bench.model.sampling import denoise, make_scheduler
from dqar_bench.strategy.adapter import adapter_for
from tests.test_families import HEAD, Tiny, strategy
from tests.test_fidelity import STEPS, pab_reference

HOSTS = {"pixart": "transformer_blocks", "wan": "blocks"}


@pytest.fixture(scope="module")
def tinies():
    return {family: Tiny(family) for family in HOSTS}


def pab_cross(registry, every=6, window=(100, 800)):
    """PAB's cross-attention broadcast; `window` None: every step may reuse (scheduler `all`)."""
    scheduler = "all" if window is None else ("timestep-window", {"low": window[0], "high": window[1]})
    return strategy(registry, {"scheduler": scheduler, "gate": ("interval", {"every": every}),
                               "cache": "cross-attention-output", "quantizer": "none"})


def sample(tiny, s, steps):
    """The output, the sampler's timesteps and, per step, how often each block's cross-attention computed."""
    scheduler = make_scheduler(tiny.spec.sampler, tiny.model.scheduler_config)
    blocks = getattr(tiny.model.transformer, HOSTS[tiny.spec.name])
    calls: dict[int, list[int]] = {}
    step = [-1]

    def counter(index):
        def hook(*_):
            calls.setdefault(step[0], [0] * len(blocks))[index] += 1

        return hook

    handles = [b.attn2.to_q.register_forward_hook(counter(i)) for i, b in enumerate(blocks)]
    before = s.before_step

    def tick(ctx):
        step[0] = ctx.step
        before(ctx)

    s.before_step = tick
    try:
        with adapter_for(tiny.model.transformer).install(tiny.model.transformer, s):
            out = denoise(tiny.model.transformer, scheduler, tiny.condition, 0, steps, 3.0, s)
    finally:
        for h in handles:
            h.remove()
        del s.before_step
    return out, [float(t) for t in scheduler.timesteps], calls


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("family", list(HOSTS))
def test_cross_attention_recomputes_like_diffusers_pab_hook(tinies, registry, family, steps):
    tiny = tinies[family]
    s = pab_cross(registry)
    out, timesteps, calls = sample(tiny, s, steps)
    expected = pab_reference(timesteps, 6, 100, 800)
    passes = 2 if tiny.spec.guidance == "cfg-separate" else 1  # each branch computes its own cross-attention
    num_blocks = tiny.model.num_blocks
    assert {s for s, row in calls.items() if any(row)} == expected
    assert all(calls[s] == [passes] * num_blocks for s in expected)  # every block, every branch
    assert len(expected) < steps and s.stats.reused == (steps - len(expected)) * num_blocks
    assert torch.isfinite(out).all()


def test_self_attention_computes_at_every_step_under_a_cross_attention_cache(tinies, registry):
    tiny = tinies["pixart"]
    s = pab_cross(registry, every=2, window=None)
    blocks = tiny.model.transformer.transformer_blocks
    ran = []
    handles = [b.attn1.to_q.register_forward_hook(lambda *a: ran.append(1)) for b in blocks]
    with adapter_for(tiny.model.transformer).install(tiny.model.transformer, s):
        assert all("forward" in b.attn2.__dict__ and "forward" not in b.attn1.__dict__ for b in blocks)
        out = tiny.run(s, steps=4)
    for h in handles:
        h.remove()
    assert len(ran) == 4 * len(blocks) and s.stats.reused == 2 * len(blocks)
    assert not torch.equal(out, tiny.run(steps=4))


@pytest.mark.parametrize("family", list(HOSTS))
def test_removal_leaves_the_model_bit_identical(tinies, registry, family):
    tiny = tinies[family]
    state = {k: v.clone() for k, v in tiny.model.transformer.state_dict().items()}
    sample(tiny, pab_cross(registry, every=2, window=None), 3)
    assert not any("forward" in m.__dict__ for m in tiny.model.transformer.modules())
    assert torch.equal(tiny.run(), tiny.baseline)
    assert all(torch.equal(v, state[k]) for k, v in tiny.model.transformer.state_dict().items())


@pytest.mark.parametrize("model", ["dit-tiny", "sd3-tiny", "flux-tiny", "cogvideox-tiny", "hunyuan-video-tiny"])
def test_families_without_cross_attention_refuse_it_at_validate(write_suite, registry, model):
    body = HEAD.format(model=model, sampler="") + "  - name: pab_cross\n    gate: interval\n    cache: cross-attention-output\n"
    if model == "dit-tiny":
        body = body.replace("prompt_lengths: [4]\n", "")
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(body), registry)
    message = str(err.value)
    family = model.removesuffix("-tiny")
    assert "\n" not in message and "case 'pab_cross'" in message
    assert f"family '{family}' has no cross-attention module" in message and "pixart, pixart-sigma, wan" in message


def test_pixart_and_wan_host_it_at_validate(write_suite, registry):
    for model in ("pixart-tiny", "pixart-sigma-tiny", "wan-tiny"):
        suite = load_suite(write_suite(HEAD.format(model=model, sampler="") + "  - name: pab_cross\n    gate: interval\n    cache: cross-attention-output\n", f"{model}.yaml"), registry)
        assert [c.name for c in suite.cases] == ["baseline", "pab_cross"]
