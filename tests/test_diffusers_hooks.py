"""diffusers' own cache hooks as cases: identity with our PAB, exact removal, refusals, a run.

The PAB test is the project's claim made checkable: dqar-bench's PAB assembly (interval
gate N = 2, attention-output cache, timestep window (100, 800)) and diffusers'
`PyramidAttentionBroadcastHook` with `spatial_attention_block_skip_range: 2` and its
default `spatial_attention_timestep_skip_range: (100, 800)` give the same bits on the
trained digits model. Both compute at the first call, outside 100 < t < 800, and at every
N-th call counted from the first; both hand back the very tensor they stored. TaylorSeer
(`schedule: diffusers`, the forecast cache) is bit-identical to diffusers' hook too, and
FirstBlockCache decides the same steps.
"""

from __future__ import annotations

import json

import pytest
import torch

from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import SuiteError
from dqar_bench.core.parts import build_part
from dqar_bench.model import families
from dqar_bench.model.models import TINY_MODELS
from dqar_bench.model.sampling import denoise, labels_condition, make_scheduler
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.diffusers_hooks import HOOKS, DiffusersHook, check, refusal, taylorseer_patterns
from dqar_bench.strategy.strategy import Strategy
from dqar_bench.testing import _Bench

CPU = torch.device("cpu")
STEPS = 6

# A setting of each hook that reuses within 6 steps of a tiny model where the hook runs.
SETTINGS = {
    "first-block-cache": {"threshold": 0.3},
    "pyramid-attention-broadcast": {"spatial_attention_timestep_skip_range": [0, 1000]},
    "taylorseer": {"cache_interval": 2, "disable_cache_before_step": 1},
    "faster-cache": {"is_guidance_distilled": True},
    "mag-cache": {"threshold": 1.0, "retention_ratio": 0.0},
}


def _pab(registry) -> Strategy:
    def part(kind, name, params=None):
        return build_part(registry.get(kind, name).cls, params or {})

    return Strategy(
        part("scheduler", "timestep-window", {"low": 100, "high": 800}), part("gate", "interval", {"every": 2}),
        part("cache", "attention-output"), part("quantizer", "none"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("steps", [20, 25])
def test_our_pab_and_diffusers_pab_give_the_same_bits_on_digits_dit(registry, steps):
    bench = _Bench.load("digits-dit")
    model = bench.model
    scheduler = make_scheduler("ddim", model.scheduler_config)
    condition = labels_condition([1, 3, 5, 7], model.null_class, CPU)
    ours = _pab(registry)
    with adapter_for(model.transformer).install(model.transformer, ours):
        mine = denoise(model.transformer, scheduler, condition, 0, steps, 1.5, ours)
    hook = DiffusersHook(check({"name": "pyramid-attention-broadcast", "spatial_attention_block_skip_range": 2}, steps))
    with hook.install(model.transformer):
        theirs = denoise(model.transformer, scheduler, condition, 0, steps, 1.5, hook)
    untouched = denoise(model.transformer, scheduler, condition, 0, steps, 1.5, None)
    assert not torch.equal(mine, untouched)  # PAB did reuse
    assert torch.equal(mine, theirs)
    assert ours.stats.reused == hook.stats.reused > 0
    assert ours.stats.reuse_map == hook.stats.reuse_map


CASES = [(family, name) for family in TINY_MODELS for name in HOOKS]


@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_each_hook_runs_or_is_refused_and_removal_leaves_the_model_exact(family, name):
    spec_family = families.get(family)
    raw = {"name": name, **SETTINGS[name]}
    hook = DiffusersHook(check(raw, STEPS))
    reason = hook.refusal(spec_family)
    if reason:
        assert "\n" not in reason and reason == refusal(name, spec_family, SETTINGS[name])
        return
    bench = _Bench.load(TINY_MODELS[family])
    transformer = bench.model.transformer
    reference = bench.reference(STEPS)
    with hook.install(transformer):
        first = bench.call(hook, 0, STEPS)
        second = bench.call(hook, 0, STEPS)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)  # state reset between sampling calls
    assert hook.stats.reused > 0 and not torch.equal(first, reference)
    assert not any("forward" in m.__dict__ or "_diffusers_hook" in m.__dict__ for m in transformer.modules())
    assert torch.equal(bench.call(None, 0, STEPS), reference)


def test_refusals_name_the_reason():
    hook = DiffusersHook(check({"name": "first-block-cache"}, STEPS))
    assert hook.refusal(families.get("dit")) is None
    assert "per-call Python state" in hook.refusal(families.get("dit"), "compile")
    assert "context_pre_only" in refusal("first-block-cache", families.get("sd3"))
    assert "cache_identifiers" in refusal("taylorseer", families.get("dit"))
    assert refusal("taylorseer", families.get("dit"), {"cache_identifiers": [r"transformer_blocks\.\d+\.attn1"]}) is None
    assert refusal("taylorseer", families.get("flux")) is None
    assert "two passes" in refusal("faster-cache", families.get("wan"))
    # on two passes per step `is_guidance_distilled` would make the hook extrapolate one branch from the other
    assert "from the other's outputs" in refusal("faster-cache", families.get("wan"), {"is_guidance_distilled": True})
    assert "is_guidance_distilled" not in refusal("faster-cache", families.get("wan"))
    assert refusal("faster-cache", families.get("sd3"), {"is_guidance_distilled": True}) is None


def test_taylorseer_patterns_read_from_source_are_the_ones_diffusers_uses():
    from diffusers.hooks.taylorseer_cache import _TRANSFORMER_BLOCK_IDENTIFIERS

    assert taylorseer_patterns() == tuple(_TRANSFORMER_BLOCK_IDENTIFIERS)


HEAD = """\
name: hooks
model: dit-tiny
sampler: {name: ddim, steps: 4, guidance_scale: 4.0}
class_labels: [1, 3]
seeds: [0]
device: cpu
timing: {warmup: 1, repeats: 1}
cases:
  - name: baseline
"""


@pytest.mark.parametrize("case,expected", [
    ("    diffusers-hook: {name: pyramid-broadcast}", "field 'diffusers-hook.name': unknown diffusers hook 'pyramid-broadcast' (did you mean 'pyramid-attention-broadcast'?)"),
    ("    diffusers-hook: {name: first-block-cache, treshold: 0.1}", "field 'diffusers-hook.treshold': FirstBlockCacheConfig has no field 'treshold'"),
    ("    diffusers-hook: {name: pyramid-attention-broadcast, current_timestep_callback: 1}", "the harness sets it from the sampler"),
    ("    diffusers-hook: {name: faster-cache, tensor_format: BHWC, is_guidance_distilled: true}", "field 'diffusers-hook.tensor_format'"),
    ("    diffusers-hook: {name: mag-cache, mag_ratios: null}", "diffusers refuses the config: `mag_ratios` must be provided"),
    ("    diffusers-hook: {name: mag-cache, mag_ratios: sd3}", "diffusers publishes no 'sd3' ratios"),
    ("    diffusers-hook: first-block-cache", "field 'diffusers-hook' must be a mapping"),
    ("    gate: never\n    diffusers-hook: {name: first-block-cache}", "fields 'diffusers-hook' and 'gate'"),
])
def test_bad_hook_cases_fail_validation_in_one_line(registry, write_suite, case, expected):
    path = write_suite(HEAD + "  - name: hooked\n" + case + "\n")
    with pytest.raises(SuiteError) as err:
        load_suite(path, registry)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "case 'hooked'" in message
    assert expected in message


@pytest.mark.slow
def test_a_hook_case_runs_through_the_runner_next_to_our_pab(write_suite, tmp_path):
    from dqar_bench.cli import main
    from dqar_bench.measure.records import RunDir

    path = write_suite(HEAD + """\
  - name: pab
    gate: {name: interval, every: 2}
    cache: attention-output
    scheduler: {name: timestep-window, low: 100, high: 800}
  - name: diffusers_pab
    diffusers-hook: {name: pyramid-attention-broadcast, spatial_attention_block_skip_range: 2}
  - name: diffusers_taylorseer
    diffusers-hook: {name: taylorseer}
""")
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 0  # unsupported is not a failure
    records = {r.case: r for r in RunDir(tmp_path / "run").records()}
    ours, theirs = records["pab"], records["diffusers_pab"]
    assert theirs.status == "ok" and theirs.diffusers_hook["name"] == "pyramid-attention-broadcast"
    assert theirs.reused == ours.reused > 0 and theirs.reuse_map == ours.reuse_map
    assert theirs.quality == ours.quality  # the same bits, so the same distance to the baseline
    refused = records["diffusers_taylorseer"]  # recorded, not a validation error: a suite may list several families
    assert refused.status == "unsupported" and refused.error.startswith("unsupported on family 'dit': TaylorSeer's default patterns")
    table = (tmp_path / "run" / "table.md").read_text()
    assert "diffusers:pyramid-attention-broadcast(spatial_attention_block_skip_range=2)" in table
    identity = json.dumps(theirs.identity)
    assert "diffusers_hook" in identity and "diffusers_hook" not in json.dumps(ours.identity)


def test_plan_names_the_hook_cases_it_cannot_plan(registry, write_suite):
    from dqar_bench.views.plan import plan_suite, render_plan

    path = write_suite(HEAD + "  - name: diffusers_fbc\n    diffusers-hook: {name: first-block-cache}\n")
    suite = load_suite(path, registry)
    geo, plans = plan_suite(suite, registry)
    assert plans == [] and "not planned (diffusers' own hooks decide inside diffusers" in render_plan(suite, geo, plans)
    assert "diffusers_fbc" in render_plan(suite, geo, plans)


TAYLOR_IDENTIFIERS = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]


@pytest.mark.parametrize("order", [1, 2])
def test_our_taylorseer_and_diffusers_taylorseer_give_the_same_bits_on_digits_dit(registry, order):
    """`schedule: diffusers` with the forecast cache against diffusers' hook on attn1 and ff, factors in float32."""
    bench = _Bench.load("digits-dit")
    model = bench.model
    scheduler = make_scheduler("ddim", model.scheduler_config)
    condition = labels_condition(list(range(10)), model.null_class, CPU)

    def part(kind, name, params=None):
        return build_part(registry.get(kind, name).cls, params or {})

    ours = Strategy(
        part("scheduler", "all"), part("gate", "warmup-interval", {"every": 4, "warmup": 2, "schedule": "diffusers"}),
        part("cache", "forecast", {"order": order}), part("quantizer", "none"),
    )
    with adapter_for(model.transformer).install(model.transformer, ours):
        mine = denoise(model.transformer, scheduler, condition, 0, 20, 1.5, ours)
    hook = DiffusersHook(check({
        "name": "taylorseer", "cache_interval": 4, "disable_cache_before_step": 2, "max_order": order,
        "taylor_factors_dtype": "float32", "cache_identifiers": TAYLOR_IDENTIFIERS,
    }, 20))
    with hook.install(model.transformer):
        theirs = denoise(model.transformer, scheduler, condition, 0, 20, 1.5, hook)
    assert ours.stats.reused > 0 and ours.stats.reuse_map == hook.stats.reuse_map
    assert torch.equal(mine, theirs)


def test_our_first_block_cache_decides_as_diffusers_on_digits_dit(registry):
    """The same skipped steps; outputs equal up to float rounding (per-block residuals summed, against the tail's)."""
    bench = _Bench.load("digits-dit")
    model = bench.model
    scheduler = make_scheduler("ddim", model.scheduler_config)
    condition = labels_condition(list(range(10)), model.null_class, CPU)

    def part(kind, name, params=None):
        return build_part(registry.get(kind, name).cls, params or {})

    ours = Strategy(part("scheduler", "all"), part("gate", "residual-change", {"threshold": 0.1}), part("cache", "block-residual"), part("quantizer", "none"))
    with adapter_for(model.transformer).install(model.transformer, ours):
        mine = denoise(model.transformer, scheduler, condition, 0, 20, 1.5, ours)
    hook = DiffusersHook(check({"name": "first-block-cache", "threshold": 0.1}, 20))
    with hook.install(model.transformer):
        theirs = denoise(model.transformer, scheduler, condition, 0, 20, 1.5, hook)
    assert ours.stats.reused > 0 and ours.stats.reuse_map == hook.stats.reuse_map
    assert torch.allclose(mine, theirs, rtol=0, atol=1e-5)
