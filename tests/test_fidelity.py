"""Each peer's recompute steps against its reference definition, at 20, 25 and 50 steps.

The reference definitions below are written from the reference code's logic (or, for
Delta-DiT, which published no code, from the paper's description), not from the parts:
FORA's countdown test (`prathebaselva/FORA`, `src/models.py`), diffusers' PAB,
TaylorSeer and FirstBlockCache hooks (`diffusers/hooks/*.py`), TaylorSeer's own DiT
counter (`Shenyi-Z/TaylorSeer`, `TaylorSeer-DiT/cache_functions/cal_type.py`). What the
model really recomputed is read from forward hooks on modules that run only when a block
computes (`tests.test_peers.StepLog`), on the tiny DiT.
"""

from __future__ import annotations

import pytest
import torch

from dqar_bench.model.sampling import make_scheduler
from tests.test_peers import StepLog, parts, run

STEPS = (20, 25, 50)


def fora_reference(num_steps: int, n: int) -> set[int]:
    """FORA `boost_infer_static`: the loop index i counts down from num_steps - 1; compute
    where `i == num_steps - 1 or i % n == 0`."""
    computed = set()
    for s, i in enumerate(reversed(range(num_steps))):
        if i == num_steps - 1 or i % n == 0:
            computed.add(s)
    return computed


def pab_reference(timesteps: list[int], n: int, low: int, high: int) -> set[int]:
    """diffusers' PyramidAttentionBroadcastHook: compute if no cache, at iteration 0, outside
    low < t < high, or where iteration % n == 0; the iteration counts every call."""
    computed, cache, iteration = set(), None, 0
    for s, t in enumerate(timesteps):
        inside = low < t < high
        if cache is None or iteration == 0 or not inside or iteration % n == 0:
            computed.add(s)
            cache = "output"
        iteration += 1
    return computed


def taylorseer_official(num_steps: int, interval: int, first_enhance: int) -> set[int]:
    """TaylorSeer's `cal_type`: the step counts down; the first `first_enhance` steps are full,
    then a counter reset at each full step asks for one when it reaches interval - 1."""
    computed, counter = set(), 0
    for s, step in enumerate(reversed(range(num_steps))):
        first_steps = step > num_steps - first_enhance - 1
        if first_steps or counter == interval - 1:
            computed.add(s)
            counter = 0
        else:
            counter += 1
    return computed


def taylorseer_diffusers(num_steps: int, cache_interval: int, disable_cache_before_step: int) -> set[int]:
    """diffusers' TaylorSeerCacheHook: current_step starts at -1 and counts every call."""
    computed, current_step = set(), -1
    for s in range(num_steps):
        current_step += 1
        warmup = current_step < disable_cache_before_step
        interval = (current_step - disable_cache_before_step - 1) % cache_interval == 0
        if warmup or interval:
            computed.add(s)
    return computed


def delta_dit_reference(num_steps: int, num_blocks: int, block: int) -> set[int]:
    """Delta-DiT as the paper describes it: sampling step t runs T..1; while t > b the rear
    N_c blocks are Delta-cached, after that the front N_c; the cache is refreshed every N = 2
    steps. The 20-step setting b = 12 scales with the steps (b = 0.6 T); N_c = 21 of 28."""
    n_c = round(num_blocks * 21 / 28)
    b = 0.6 * num_steps
    computed = set()
    for s in range(num_steps):
        t = num_steps - s
        cached = range(num_blocks - n_c, num_blocks) if t > b else range(n_c)
        if block not in cached or s % 2 == 0:
            computed.add(s)
    return computed


def first_block_cache_reference(residuals: list[torch.Tensor], threshold: float) -> set[int]:
    """diffusers' FBCHeadBlockHook: the rest computes where there is no reference residual or
    mean|r - r_ref| / mean|r_ref| > threshold; r_ref is block 0's residual at the last such step."""
    computed, reference = set(), None
    for s, residual in enumerate(residuals):
        if reference is None or ((residual - reference).abs().mean() / reference.abs().mean()).item() > threshold:
            computed.add(s)
            reference = residual
    return computed


def computed_steps(tiny, strategy, steps, pick, block=0):
    log = StepLog(tiny.transformer, pick)
    run(tiny, strategy, steps=steps, logs=(log,))
    return set(log.computed_steps(block))


@pytest.mark.parametrize("steps", STEPS)
def test_fora_recomputes_where_its_countdown_index_is_a_multiple_of_n(tiny, registry, steps):
    s = parts(registry, ("interval", {"every": 3, "anchor": "end"}), "attention-mlp-output")
    assert computed_steps(tiny, s, steps, lambda b: b.ff.net[0]) == fora_reference(steps, 3)
    assert steps - 1 in fora_reference(steps, 3)  # the last step always recomputes


def test_fora_and_the_start_anchor_agree_only_where_the_last_step_is_a_multiple_of_n():
    starts = {steps: {s for s in range(steps) if s % 3 == 0} for steps in STEPS}
    assert fora_reference(25, 3) == starts[25]
    assert fora_reference(20, 3) != starts[20] and fora_reference(50, 3) != starts[50]
    assert sorted(fora_reference(20, 3))[:4] == [0, 1, 4, 7]


@pytest.mark.parametrize("steps", STEPS)
def test_pab_recomputes_like_diffusers_hook(tiny, registry, steps):
    s = parts(registry, ("interval", {"every": 2}), "attention-output", scheduler=("timestep-window", {"low": 100, "high": 800}))
    scheduler = make_scheduler("ddim", tiny.scheduler_config)
    scheduler.set_timesteps(steps)
    expected = pab_reference([int(t) for t in scheduler.timesteps], 2, 100, 800)
    assert computed_steps(tiny, s, steps, lambda b: b.attn1.to_q) == expected


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("schedule", ["official", "diffusers"])
def test_taylorseer_recomputes_like_the_official_code_or_diffusers(tiny, registry, steps, schedule):
    s = parts(registry, ("warmup-interval", {"every": 4, "warmup": 2, "schedule": schedule}), ("forecast", {"order": 2}))
    reference = taylorseer_official(steps, 4, 2) if schedule == "official" else taylorseer_diffusers(steps, 4, 2)
    assert computed_steps(tiny, s, steps, lambda b: b.attn1.to_q) == reference


def test_taylorseer_schedules_differ_as_anchors_say():
    assert sorted(taylorseer_official(20, 4, 2)) == [0, 1, 5, 9, 13, 17]
    assert sorted(taylorseer_diffusers(20, 4, 2)) == [0, 1, 3, 7, 11, 15, 19]  # one more full step


@pytest.mark.parametrize("steps", STEPS)
def test_delta_dit_recomputes_as_the_paper_describes(tiny, registry, steps):
    s = parts(registry, ("interval", {"every": 2}), "block-residual", scheduler=("front-rear", {"blocks": 0.75, "boundary": 0.4}))
    log = StepLog(tiny.transformer, lambda b: b.norm1)
    run(tiny, s, steps=steps, logs=(log,))
    for block in range(tiny.num_blocks):
        assert set(log.computed_steps(block)) == delta_dit_reference(steps, tiny.num_blocks, block), block


def test_delta_dit_fractions_round_to_the_nearest_block_halves_to_even(registry):
    front_rear = registry.get("scheduler", "front-rear").cls
    six = front_rear().mask(10, 6)
    assert six[-1].sum().item() == 4  # round(0.75 * 6) = round(4.5) = 4: 0.67 of the blocks
    assert front_rear().mask(20, 28)[0].sum().item() == 21 and front_rear().mask(20, 28)[:, -1].sum().item() == 8


@pytest.mark.parametrize("steps", STEPS)
def test_first_block_cache_recomputes_like_diffusers_hook(tiny, registry, steps):
    threshold = 0.2  # dit-tiny's block 0 moves 0.1-0.3 per step: some steps skip, some compute
    s = parts(registry, ("residual-change", {"threshold": threshold}), "block-residual")
    residuals = []
    head = tiny.transformer.transformer_blocks[0].register_forward_hook(lambda m, a, out: residuals.append((out - a[0]).detach()))
    log = StepLog(tiny.transformer, lambda b: b.norm1)
    try:
        run(tiny, s, steps=steps, logs=(log,))
    finally:
        head.remove()
    expected = first_block_cache_reference(residuals, threshold)
    assert 0 < len(expected) < steps  # the comparison means something: both branches are taken
    for block in range(1, tiny.num_blocks):
        assert set(log.computed_steps(block)) == expected
    assert set(log.computed_steps(0)) == set(range(steps))
