"""`dqar-bench plan`: static reuse patterns without weights, checked against real runs."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest

from dqar_bench.cli import main
from dqar_bench.config.suite import load_suite
from dqar_bench.measure.records import RunDir
from dqar_bench.views.plan import plan_suite, runs

SUITES = Path(__file__).resolve().parent.parent / "suites"


def seed_reuse_percent(blocks: int, steps: int, warmup: float, fraction: float) -> float:
    """The seed's rule as its Python computes it (scripts/layer_sweep.py, floats): at step t,
    p = t / (N - 1); nothing while p < w; then int((p - w) / (1 - w) * int(L * f)) blocks."""
    reused = 0
    for t in range(steps):
        p = t / max(1, steps - 1)
        if p >= warmup:
            reused += int((p - warmup) / (1 - warmup) * int(blocks * fraction))
    return 100 * reused / (blocks * steps)


def exact_reuse_percent(blocks: int, steps: int, warmup: Fraction, fraction: Fraction) -> float:
    """The same rule in exact rational arithmetic."""
    candidates = math.floor(fraction * blocks)
    reused = sum(
        math.floor((Fraction(t, steps - 1) - warmup) / (1 - warmup) * candidates)
        for t in range(steps)
        if Fraction(t, steps - 1) >= warmup
    )
    return 100 * reused / (blocks * steps)


def test_the_seeds_reuse_column_by_hand():
    """DiT-XL/2 (28 blocks), 50 steps, warmup 0.2: 162, 262, 343, 542 of 1400 block evaluations."""
    fractions = (0.33, 0.5, 0.66, 1.0)
    assert [round(seed_reuse_percent(28, 50, 0.2, f), 1) for f in fractions] == [11.6, 18.7, 24.5, 38.7]
    assert [round(seed_reuse_percent(28, 50, 0.2, f) * 14) for f in fractions] == [162, 262, 343, 542]
    # The column depends on float rounding: where (p - w) / (1 - w) * candidates is a whole
    # number (t = 21 at f = 0.5: exactly 4), the floats land just below it and floor one lower.
    exact = [round(exact_reuse_percent(28, 50, Fraction(1, 5), Fraction(str(f))), 1) for f in fractions]
    assert exact == [11.6, 18.8, 24.5, 39.0]


def test_seed_linear_reproduces_the_seeds_float_arithmetic(registry):
    seed_linear = registry.get("scheduler", "seed-linear").cls
    for f in (0.33, 0.5, 0.66, 1.0):
        mask = seed_linear(layer_fraction=f, warmup=0.2).mask(50, 28)
        assert 100 * mask.sum().item() / 1400 == pytest.approx(seed_reuse_percent(28, 50, 0.2, f), abs=1e-12)
        assert mask[:10].sum() == 0 and all(mask[t, : int(mask[t].sum())].all() for t in range(50))  # shallow first


def test_plan_prints_the_seeds_table_without_the_checkpoint(capsys):
    assert main(["plan", str(SUITES / "seed-table.yaml")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| seed_layers")]
    assert [row.split(" | ")[2] for row in rows] == ["11.6 %", "18.7 %", "24.5 %", "38.7 %"]
    assert "28 blocks" in out and "50 ddim steps" in out


def test_plan_prints_the_seeds_warmup_column(registry):
    suite = load_suite(SUITES / "seed-warmup.yaml", registry)
    _, plans = plan_suite(suite, registry)
    assert [round(100 * p.reuse_ratio, 1) for p in plans] == [12.9, 11.6, 10.1, 8.8, 7.4, 6.0]
    seed = [seed_reuse_percent(28, 50, w, 0.33) for w in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
    assert [100 * p.reuse_ratio for p in plans] == pytest.approx(seed, abs=1e-9)


STATIC_CASES = """
cases:
  - name: baseline
  - name: fora
    gate: {name: interval, every: 3, anchor: end}
    cache: attention-mlp-output
  - name: pab
    gate: {name: interval, every: 2}
    scheduler: {name: timestep-window, low: 100, high: 800}
  - name: taylorseer_diffusers
    gate: {name: warmup-interval, every: 3, warmup: 2, schedule: diffusers}
    cache: {name: forecast, order: 1}
  - name: delta_dit
    gate: {name: interval, every: 2}
    cache: block-residual
    scheduler: {name: front-rear}
  - name: seed
    gate: always
    scheduler: {name: seed-linear, layer_fraction: 0.5, warmup: 0.2}
  - name: ramp
    gate: always
    cache: kv
    scheduler: {name: linear, layer_fraction: 1.0, warmup: 0.3}
  - name: dqar
    gate: {name: dqar, threshold: 0.981, warmup: 1}
    scheduler: {name: step, layer_fraction: 1.0}
"""


@pytest.mark.slow
def test_plan_equals_the_reuse_a_real_run_records(write_suite, tmp_path, registry):
    head = "name: planned\nmodel: dit-tiny\nsampler: {name: ddim, steps: 11, guidance_scale: 4.0}\nclass_labels: [1]\nseeds: [0]\ndevice: cpu\ntiming: {warmup: 0, repeats: 1, per_step: false}\n"
    path = write_suite(head + STATIC_CASES)
    suite = load_suite(path, registry)
    _, plans = plan_suite(suite, registry)
    planned = {p.case: p for p in plans}
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    recorded = {r.case: r for r in RunDir(out).records()}
    for name, plan in planned.items():
        record = recorded[name]
        if plan.exact:
            assert (plan.reused, plan.evaluations) == (record.reused, record.evaluations), name
        else:  # a gate that reads signals: the plan is an upper bound
            assert record.reused <= plan.reused and record.evaluations == plan.evaluations, name
    assert {p.case for p in plans if not p.exact} == {"dqar"}
    assert all(planned[n].reused > 0 for n in ("fora", "pab", "taylorseer_diffusers", "delta_dit", "seed", "ramp"))


def test_plan_of_an_unknown_checkpoint_is_a_one_line_error(write_suite, capsys):
    path = write_suite("name: x\nmodel: someone/unknown-dit\ncases:\n  - name: baseline\n  - name: iv\n    gate: interval\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KNOWN_CHECKPOINTS" in err and "someone/unknown-dit" in err


FLUX_HEAD = """\
name: planned-flux
model: flux-tiny
sampler: {name: flow-euler, steps: 12, guidance_scale: 4.0}
prompt_lengths: [8]
seeds: [0]
device: cpu
timing: {warmup: 0, repeats: 1, per_step: false}
baseline: baseline
cases:
  - name: baseline
  - name: pab
    gate: {name: interval, every: 2}
    scheduler: {name: timestep-window, low: 300, high: 800}
"""


@pytest.mark.parametrize("model", ["flux-tiny", "sd3-tiny"])
def test_plan_of_a_flow_suite_with_dynamic_shift_prints_its_table(write_suite, capsys, model):
    # FLUX's scheduler shifts by the image's token count (mu): planned as `denoise` sets it
    assert main(["plan", str(write_suite(FLUX_HEAD.replace("flux-tiny", model)))]) == 0
    out = capsys.readouterr().out
    assert f"model {model}" in out and "| pab |" in out


def test_plan_of_the_shipped_flow_peers_suite_for_each_model(capsys):
    assert main(["plan", str(SUITES / "peers-flow.yaml")]) == 0  # one plan per model of the list, each with its calibration
    out = capsys.readouterr().out
    assert out.count("| full_dqar |") == 3 and all(m in out for m in ("flux-tiny", "sd3-tiny", "wan-tiny"))


@pytest.mark.slow
def test_plan_of_a_flux_suite_equals_the_reuse_a_real_run_records(write_suite, tmp_path, registry):
    # the timestep window reads the timesteps, so this holds only if plan shifts them as the run does
    path = write_suite(FLUX_HEAD)
    _, plans = plan_suite(load_suite(path, registry), registry)
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    recorded = {r.case: r for r in RunDir(out).records()}
    (plan,) = plans
    assert plan.exact and 0 < plan.reused < plan.evaluations
    assert (plan.reused, plan.evaluations) == (recorded["pab"].reused, recorded["pab"].evaluations)


def test_plan_of_more_ddim_steps_than_timesteps_is_a_one_line_error(write_suite, capsys):
    path = write_suite("name: x\nmodel: dit-tiny\nsampler: {name: ddim, steps: 1001}\ncases:\n  - name: baseline\n  - name: iv\n    gate: interval\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'sampler.steps'" in err and "sampler.steps <= 1000" in err


def test_runs_are_run_length_encoded():
    assert runs([0, 0, 0, 1, 2, 2]) == "0 x3, 1, 2 x2"
    assert runs([]) == ""


def test_a_case_name_with_a_pipe_keeps_the_plan_tables_columns(write_suite, capsys):
    """The plan's table goes through the one escaping renderer (`views.markdown`)."""
    path = write_suite("name: x\nmodel: dit-tiny\nsampler: {steps: 4}\nclass_labels: [1]\ncases:\n  - name: baseline\n  - name: 'a|b'\n    gate: interval\n")
    assert main(["plan", str(path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| a")]
    assert rows and rows[0].startswith("| a\\|b |") and rows[0].replace("\\|", "").count("|") == 5
