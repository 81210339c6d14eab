"""The signals `dqar-bench calibrate` records, against the peers' own calibrations.

MagCache: diffusers' `MagCacheConfig(calibrate=True)` on flux-tiny, and the official Wan
script's calibration (`MagCache4Wan2.1/magcache_generate.py`, Zehong-Ma/MagCache at
df81cb18) re-implemented here from its lines on wan-tiny. Both sides run in the test, on
the same model, seed and steps; nothing recorded elsewhere is compared.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from dqar_bench.config.suite import load_suite
from dqar_bench.measure.signal_trace import SignalTrace, fit_rescale
from dqar_bench.model import families
from dqar_bench.model.models import default_sampler
from dqar_bench.runs import signal_record
from dqar_bench.runs.signal_record import record_signals
from dqar_bench.strategies.gates.magnitude import Magnitude
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.diffusers_hooks import DiffusersHook
from dqar_bench.testing import GUIDANCE, LABELS, PROMPT_LENGTHS, _Bench
from tests.test_peer_policies import assemble, official_wan

STEPS = 8
MODELS = ["digits-dit", "digits-flow", "dit-tiny", "flux-tiny", "sd3-tiny", "wan-tiny"]


@pytest.fixture()
def calibration(write_suite, registry):
    """(bench, suite) for a model: the tiny model and conditioning `_Bench` shares, and a
    suite with its sampler (the same labels or captions as the bench)."""

    def make(name: str, steps: int = STEPS):
        bench = _Bench.load(name)
        inputs = f"prompt_lengths: {PROMPT_LENGTHS}" if bench.model.spec.text is not None else f"class_labels: {LABELS}"
        path = write_suite(f"""\
            name: calibration
            model: {name}
            sampler: {{name: {default_sampler(name)}, steps: {steps}, guidance_scale: {GUIDANCE}}}
            {inputs}
            seeds: [0]
            device: cpu
            cases:
              - name: baseline
        """, f"{name}.yaml")
        return bench, load_suite(path, registry)

    return make


def _record(bench, suite, registry, seeds=(0,)) -> SignalTrace:
    return record_signals(bench.model, suite, bench.condition, list(seeds), registry)


# --- MagCache ---------------------------------------------------------------------------------

def test_flux_ratios_equal_diffusers_magcache_calibration(calibration, registry, monkeypatch):
    from diffusers.hooks.mag_cache import MagCacheBlockHook

    bench, suite = calibration("flux-tiny")
    trace = _record(bench, suite, registry)
    # diffusers' calibration mode, applied with its own apply function and driven as its pipeline would
    ratios: list[float] = []
    step = MagCacheBlockHook._perform_calibration_step

    def keep(self, state, residual):
        step(self, state, residual)
        ratios.append(state.calibration_ratios[-1])

    monkeypatch.setattr(MagCacheBlockHook, "_perform_calibration_step", keep)
    hook = DiffusersHook({"name": "mag-cache", "config": {"calibrate": True, "num_inference_steps": STEPS}})
    with hook.install(bench.model.transformer):
        bench.call(hook, 0, STEPS)
    assert len(ratios) == STEPS and ratios[0] == 1.0
    # the official calibration keeps 5 decimals (MagCache4FLUX/magcache_flux.py line 202), diffusers all of them
    assert np.allclose(trace.mag_ratios, [round(r, 5) for r in ratios], rtol=0, atol=1e-6)
    assert np.allclose(trace.mag_ratios, ratios, rtol=0, atol=5e-6 + 1e-7)
    assert trace.branches == 1 and len(set(trace.mag_ratios)) > 2  # a real sequence, not a constant


def official_wan_calibration(transformer, run) -> list[float]:
    """MagCache4Wan2.1/magcache_generate.py `magcache_calibration` (lines 80-196) on diffusers' Wan blocks.

    Per model call (`cnt`, conditional and unconditional passes alternating): `ori_x` is
    the token sequence entering the blocks (line 160), `residual_x = x - ori_x` after the
    last block (lines 163-165); from the third call on (line 166, `cnt >= 2`) the ratio is
    `((residual_x.norm(dim=-1) / residual_cache[cnt % 2].norm(dim=-1)).mean()).item()`
    (line 167), kept to 5 decimals (line 170); `residual_cache[cnt % 2] = residual_x`
    (line 175). The script's ratio list is `[1.0]*2 + norm_ratio` (line 910): interleaved
    [c0, u0, c1, u1, ...].
    """
    blocks = transformer.blocks
    state = {"cnt": 0, "ori_x": None, "residual_cache": [None, None], "norm_ratio": []}

    def enter(module, args, kwargs):
        state["ori_x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def leave(module, args, kwargs, x):
        residual_x = x - state["ori_x"]
        cnt, cache = state["cnt"], state["residual_cache"]
        if cnt >= 2:
            norm_ratio = ((residual_x.norm(dim=-1) / cache[cnt % 2].norm(dim=-1)).mean()).item()
            state["norm_ratio"].append(round(norm_ratio, 5))
        cache[cnt % 2] = residual_x
        state["cnt"] += 1

    handles = [blocks[0].register_forward_pre_hook(enter, with_kwargs=True), blocks[-1].register_forward_hook(leave, with_kwargs=True)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return [1.0] * 2 + state["norm_ratio"]


def test_wan_ratios_per_branch_equal_the_official_calibration_and_skip_as_its_loop(calibration, registry):
    steps = 12
    bench, suite = calibration("wan-tiny", steps)
    trace = _record(bench, suite, registry)
    interleaved = official_wan_calibration(bench.model.transformer, lambda: bench.call(None, 0, steps))
    assert trace.branches == 2 and len(interleaved) == 2 * steps
    cond, uncond = trace.mag_ratios
    assert np.allclose(cond, interleaved[0::2], rtol=0, atol=1e-6)
    assert np.allclose(uncond, interleaved[1::2], rtol=0, atol=1e-6)
    assert cond != uncond  # two branches, two sequences: mixing them is what issue 19 found
    # the magnitude gate at the Wan script's policy skips, per branch, the calls its loop skips
    settings = {"mag_ratios": [cond, uncond], "threshold": 0.12, "max_skip_steps": 2, "retention_ratio": 0.2, "strict": True, "protected_steps": []}
    calls = official_wan(interleaved, 2 * steps, thresh=0.12, K=2, retention_ratio=0.2)
    assert any(calls) and not all(calls)
    assert Magnitude(**settings).branch_skips(steps) == [calls[0::2], calls[1::2]]
    strategy = assemble(registry, ("magnitude", settings))
    seen: list[list[bool]] = []
    after = strategy.after_step
    strategy.after_step = lambda: (seen.append([any(r) for r in strategy._reuses]), after())[1]
    with adapter_for(bench.model.transformer).install(bench.model.transformer, strategy):
        bench.call(strategy, 0, steps)
    assert seen == [[c, u] for c, u in zip(calls[0::2], calls[1::2])]


# --- TeaCache's fit ---------------------------------------------------------------------------

def test_fit_rescale_recovers_a_known_polynomial():
    coefficients = [120.0, -45.0, 6.5, 0.8, 0.01]  # the form of the published fits: highest power first
    x = [0.01 * i for i in range(1, 30)]
    y = [float(np.polyval(coefficients, v)) for v in x]
    # undefined first steps (None, inf, NaN) on either side are skipped, as the gate never reads them
    fitted = fit_rescale([None, math.inf, *x, 0.5], [0.3, 0.2, *y, math.nan], degree=4)
    assert np.allclose(fitted, coefficients, rtol=1e-6, atol=1e-8)
    assert np.allclose(fit_rescale(x, [2 * v + 0.1 for v in x], degree=1), [2.0, 0.1])
    with pytest.raises(ValueError, match="at least 5 defined pairs"):
        fit_rescale([None, 0.1, 0.2], [None, 0.1, 0.3])


def test_teacache_fit_is_made_from_every_seeds_pairs(calibration, registry):
    bench, suite = calibration("dit-tiny")
    both = _record(bench, suite, registry, seeds=(0, 1))
    each = [_record(bench, suite, registry, seeds=(s,)) for s in (0, 1)]
    assert both.rescale_pairs == each[0].rescale_pairs + each[1].rescale_pairs
    assert len(both.rescale_pairs) == 2 * (STEPS - 1)  # every step but the first, per seed
    x, y = zip(*both.rescale_pairs)
    assert both.teacache_fit() == fit_rescale(list(x), list(y))
    # the per-step signals are the seeds' means
    for name in ("residual_change", "modulation_change", "output_change"):
        a, b, mean = getattr(each[0], name), getattr(each[1], name), getattr(both, name)
        assert mean[0] is None and np.allclose(mean[1:], [(u + v) / 2 for u, v in zip(a[1:], b[1:])], rtol=1e-12)
    assert np.allclose(both.mag_ratios, [(u + v) / 2 for u, v in zip(each[0].mag_ratios, each[1].mag_ratios)], atol=5e-6)


# --- what the recording measures, and what it leaves --------------------------------------------

def test_residual_change_is_block_zeros_relative_l1_step_to_step(calibration, registry):
    """Computed here from hooks on block 0, independently of the strategy's path."""
    bench, suite = calibration("dit-tiny")
    trace = _record(bench, suite, registry)
    block = bench.model.transformer.transformer_blocks[0]
    residuals: list[torch.Tensor] = []
    held = {}
    handles = [
        block.register_forward_pre_hook(lambda m, a, k: held.update(x=k.get("hidden_states", a[0] if a else None)), with_kwargs=True),
        block.register_forward_hook(lambda m, a, out: residuals.append((out - held["x"]).float())),
    ]
    try:
        bench.call(None, 0, STEPS)
    finally:
        for h in handles:
            h.remove()
    expected = [float((r - p).abs().mean() / (p.abs().mean() + 1e-8)) for p, r in zip(residuals, residuals[1:])]
    assert trace.residual_change[0] is None
    assert np.allclose(trace.residual_change[1:], expected, rtol=1e-6)
    assert trace.snr == sorted(trace.snr)  # the noise only falls
    assert all(v is None for v in trace.entropy[0])  # nothing computed before step 0
    assert all(0 < v <= 1 for row in trace.entropy[1:] for v in row)  # normalised: H / log N_keys


@pytest.mark.parametrize("name", MODELS)
def test_recording_leaves_the_output_bit_identical_and_no_hooks(calibration, registry, name):
    bench, suite = calibration(name)
    transformer = bench.model.transformer
    before = bench.call(None, 0, STEPS)
    hooks = {id(m): (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in transformer.modules()}
    trace = _record(bench, suite, registry)
    assert torch.equal(bench.call(None, 0, STEPS), before)
    assert bench.intact() and not any("_diffusers_hook" in m.__dict__ for m in transformer.modules())
    assert {id(m): (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in transformer.modules()} == hooks
    assert trace.steps == STEPS and len(trace.timesteps) == STEPS
    assert trace.branches == (2 if name == "wan-tiny" else 1)
    assert trace.modulation_change is not None and len(trace.rescale_pairs) == STEPS - 1
    back = SignalTrace.from_json(json.loads(json.dumps(trace.to_json(), allow_nan=False)))
    assert back == trace


def test_a_recording_that_changes_the_output_is_refused(calibration, registry, monkeypatch):
    bench, suite = calibration("dit-tiny")
    monkeypatch.setattr(signal_record._Recorder, "decide", lambda self, ctx, eligible: list(eligible))  # reuses
    with pytest.raises(RuntimeError, match="changed the output"):
        _record(bench, suite, registry)
    assert bench.intact()


def test_a_family_without_a_modulated_input_records_none_for_teacache(calibration, registry, monkeypatch):
    bench, suite = calibration("dit-tiny")
    bare = dataclasses.replace(families.get("dit"), modulation="block 0 has no timestep modulation")
    monkeypatch.setattr(signal_record, "family_of", lambda transformer: bare)
    trace = _record(bench, suite, registry)
    assert trace.modulation_change is None and trace.rescale_pairs == [] and trace.teacache_fit() is None
    assert trace.to_json()["modulation_change"] is None and trace.residual_change[1] is not None


def test_trace_json_is_plain_and_checked():
    trace = SignalTrace(
        timesteps=[999, 500], steps=2, blocks=1, branches=1, snr=[0.01, math.inf], entropy=[[None], [0.5]],
        residual_change=[None, 0.1], modulation_change=None, output_change=[math.nan, 0.2], mag_ratios=[1.0, 0.98],
    )
    data = trace.to_json()
    assert data["version"] == 1 and data["snr"] == [0.01, None] and data["output_change"] == [None, 0.2]
    json.dumps(data, allow_nan=False)
    assert SignalTrace.from_json(data).snr == [0.01, None]
    with pytest.raises(ValueError, match="'version' must be 1"):
        SignalTrace.from_json({**data, "version": 0})
    with pytest.raises(ValueError, match="missing field.*entropy"):
        SignalTrace.from_json({k: v for k, v in data.items() if k != "entropy"})
    with pytest.raises(ValueError, match="'mag_ratios' must hold 1 list"):
        SignalTrace.from_json({**data, "mag_ratios": [1.0]})


# --- the page -----------------------------------------------------------------------------------

def test_signal_page_plots_each_signal_offline(tmp_path):
    from dqar_bench.views.calibration_page import write_signal_page

    trace = SignalTrace(
        timesteps=[999, 750, 500, 250], steps=4, blocks=2, branches=2, snr=[0.001, 0.1, 1.0, None],
        entropy=[[None, None], [0.9, 0.8], [0.85, None], [0.8, 0.7]], residual_change=[None, 0.3, 0.2, 0.1],
        modulation_change=[None, 0.05, 0.04, 0.06], output_change=[None, 0.07, 0.05, 0.08],
        mag_ratios=[[1.0, 0.99, 1.01, 0.97], [1.0, 0.98, 1.02, 0.96]], seeds=[3],
    )
    path = write_signal_page(trace, tmp_path / "page" / "signals.html", "wan-tiny <calibration>")
    page = path.read_text()
    for name in ("attention entropy", "block 0", "block 1", "schedule SNR", "residual change", "modulation change",
                 "output change", "MagCache magnitude ratios", "cond", "uncond", "seeds 3"):
        assert name in page, name
    assert "wan-tiny &lt;calibration&gt;" in page  # the title escaped
    assert page.count("<svg") == 5 and "<script" not in page and "src=" not in page and "<link" not in page
    assert ">0.001</text>" in page and ">1</text>" in page  # SNR on a log axis, its range labelled in values
    # block 1's entropy has a gap at step 2: two stretches of one value each, drawn as dots (a line needs two)
    assert page.count("<circle") == 2
    flat = dataclasses.replace(trace, modulation_change=None, branches=1, mag_ratios=[1.0, 0.99, 1.01, 0.97], rescale_pairs=[])
    page = write_signal_page(flat, tmp_path / "flat.html", "dit").read_text()
    assert "no modulated input" in page and "uncond" not in page and "output change" in page
