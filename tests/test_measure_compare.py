"""`dqar-bench compare` as a CI gate that knows noise, quality and what changed.

Most tests write synthetic run directories (records only), so each judgement is checked
on figures chosen for it; two run the real runner on a fixed-cost model and a virtual clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.cli import main
from dqar_bench.config.suite import load_suite
from dqar_bench.core.plugins import load_registry
from dqar_bench.measure import timing
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.model import models
from dqar_bench.runs.runner import run_suite
from dqar_bench.views.case_diff import identity_diff
from dqar_bench.views.compare import EXIT_INCONCLUSIVE, EXIT_REGRESSION, benchmark_entries, compare_runs
from tests import synthetic

# --- synthetic run directories ---------------------------------------------------------

def write_run(path, records):
    path.mkdir()
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def identity(**changes):
    base = {
        "parts": {"gate": {"name": "interval", "params": {"every": 2}, "plugin": "dqar_bench.strategies.gates.interval",
                           "distribution": "dqar-bench (built-in)", "version": "0.1.0"}},
        "model": "digits-dit", "sampler": "ddim", "steps": 25, "guidance_scale": 1.5, "seeds": [0, 1], "dtype": "float32",
        "device": "cpu", "execution_mode": "eager", "dqar_bench": "0.1.0",
    }
    base.update(changes)
    return base


def record(case, speedup=None, rounds=8, noise=0.01, load=None, seed=0, psnr=None, status="ok", **extra):
    """A finished case; with `speedup`, per-round times of it and its baseline (the baseline
    takes 1 s a round), with relative `noise` on each and a `load` factor per round that hits
    both alike (the rounds interleave them)."""
    rec = {"case": case, "suite": "s", "status": status, "batch": 2, "baseline_case": "baseline"}
    if speedup is not None:
        rng = np.random.default_rng(seed)
        load = load or [1.0] * rounds
        base = [lo * (1 + noise * rng.standard_normal()) for lo in load]
        mine = base if case == "baseline" else [lo / speedup * (1 + noise * rng.standard_normal()) for lo in load]
        rec.update(round_s=mine, baseline_round_s=base, latency_s=[m / 2 for m in mine for _ in range(2)])
    if psnr is not None:
        rec["quality"] = {"psnr_db": None if psnr == "identical" else psnr, "identical": psnr == "identical", "mse": 0.1}
    rec.update(extra)
    return rec


def ratios_record(case, ratios, **extra):
    """A case whose per-round speedups are exactly `ratios`."""
    return {"case": case, "status": "ok", "batch": 1, "round_s": [1.0 / r for r in ratios],
            "baseline_round_s": [1.0] * len(ratios), "latency_s": [1.0 / r for r in ratios], **extra}


# --- timing ----------------------------------------------------------------------------

BUSY_HALFWAY = [1.0] * 5 + [2.3] * 5  # a busy thread takes half the core from round 6 on


@pytest.mark.parametrize("seed", range(5))
def test_same_speedups_on_a_loaded_machine_are_never_a_regression(tmp_path, seed):
    base = write_run(tmp_path / "a", [record("baseline", 1.0, 10, seed=seed), record("x", 1.5, 10, seed=seed + 10)])
    new = write_run(tmp_path / "b", [
        record("baseline", 1.0, 10, seed=seed + 20, load=BUSY_HALFWAY, noise=0.03),
        record("x", 1.5, 10, seed=seed + 30, load=BUSY_HALFWAY, noise=0.03),
    ])
    comparison = compare_runs(base, new)
    assert comparison.exit_status in (0, EXIT_INCONCLUSIVE) and not comparison.regressed
    x = next(c for c in comparison.changes if c.case == "x")
    assert x.timing.kind == "speedup" and abs(x.timing.change) < 0.05  # the load cancels out round by round
    # the raw times more than doubled in half the rounds: across runs they would look much slower
    raw_base, raw_new = (json.loads((run / "records.jsonl").read_text().splitlines()[1])["latency_s"] for run in (base, new))
    assert np.mean(raw_new) / np.mean(raw_base) > 1.5


def test_noisy_speedups_that_look_slower_are_inconclusive_not_a_regression(tmp_path, capsys):
    base = write_run(tmp_path / "a", [ratios_record("x", [1.50, 1.51, 1.49, 1.50, 1.52, 1.48, 1.50, 1.51])])
    # same underlying speedup, a loaded machine: ratios all over the place, median 1.33
    new = write_run(tmp_path / "b", [ratios_record("x", [0.9, 1.0, 1.1, 1.3, 1.36, 1.6, 1.9, 2.2])])
    assert main(["compare", str(base), str(new)]) == EXIT_INCONCLUSIVE == 3
    out = capsys.readouterr().out
    assert "inconclusive: rounds too spread to judge (new: IQR / median of the per-round figures over 25%)" in out and "**REGRESSION**" not in out
    assert "**inconclusive** (no regression): x" in out and "exit status 3" in out


def test_an_injected_twenty_percent_slowdown_on_quiet_samples_is_a_regression(tmp_path, capsys):
    base = write_run(tmp_path / "a", [record("baseline", 1.0), record("x", 1.5, seed=1), record("y", 2.0, seed=2)])
    # x now spends 20 % longer per call; y is untouched
    new = write_run(tmp_path / "b", [record("baseline", 1.0, seed=3), record("x", 1.5 / 1.2, seed=4), record("y", 2.0, seed=5)])
    assert main(["compare", str(base), str(new)]) == EXIT_REGRESSION == 1
    out = capsys.readouterr().out
    assert "**1 regression(s)**: x" in out and "| **REGRESSION**: slower: speedup 1.50x -> 1.2" in out
    by_case = {c.case: c for c in compare_runs(base, new).changes}
    assert by_case["x"].timing.p_value < 0.01 and by_case["x"].timing.method == "exact"
    assert not by_case["y"].regressions and not by_case["baseline"].regressions
    # past the threshold is not enough on its own: allow 20 % and it passes
    assert main(["compare", str(base), str(new), "--max-slowdown", "20%"]) == 0


def test_too_few_rounds_are_inconclusive(tmp_path, capsys):
    base = write_run(tmp_path / "a", [ratios_record("x", [2.0, 2.01, 1.99])])
    new = write_run(tmp_path / "b", [ratios_record("x", [1.0, 1.01, 0.99])])
    assert main(["compare", str(base), str(new)]) == 3  # three rounds a side can never reach p < 0.01
    assert "inconclusive: too few rounds (3 and 3" in capsys.readouterr().out


def test_records_without_rounds_fall_back_to_time_per_image_and_say_so(tmp_path, capsys):
    old = {"status": "ok", "batch": 2}
    base = write_run(tmp_path / "a", [{"case": "x", **old, "latency_s": [1.0, 1.01, 0.99, 1.0, 1.02, 0.98]}])
    new = write_run(tmp_path / "b", [{"case": "x", **old, "latency_s": [1.3, 1.31, 1.29, 1.3, 1.32, 1.28]}])
    comparison = compare_runs(base, new)
    [x] = comparison.changes
    assert x.timing.kind == "time per image" and x.timing.change == pytest.approx(0.3)
    assert x.regressions == [f"slower: time per image +30.0% (p={x.timing.p_value:.3g})"]
    assert any("no per-round timings" in n and "drift of the machine" in n for n in comparison.notes)
    assert main(["compare", str(base), str(new)]) == 1
    assert "ms / image (no rounds)" in capsys.readouterr().out
    # raw times from two different machines say nothing about the code
    for run, cpu in ((base, "AMD EPYC"), (new, "Intel Xeon")):
        rec = json.loads((run / "records.jsonl").read_text())
        (run / "records.jsonl").write_text(json.dumps({**rec, "environment": {"cpu": cpu}}) + "\n")
    [x] = compare_runs(base, new).changes
    assert not x.regressions and x.inconclusive == [
        "time per image +30.0% across different machines (cpu: AMD EPYC -> Intel Xeon): raw times there are not comparable"
    ]


# --- deterministic figures: FLOPs and reuse ------------------------------------------------

def test_flops_up_or_reuse_down_is_a_regression_by_any_amount(tmp_path):
    base = write_run(tmp_path / "a", [
        ratios_record("more_work", [1.5] * 6, flops={"per_call": 1_000_000}, reuse_ratio=0.5),
        ratios_record("less_reuse", [1.5] * 6, flops={"per_call": 800_000}, reuse_ratio=0.48),
        ratios_record("better", [1.5] * 6, flops={"per_call": 800_000}, reuse_ratio=0.4),
    ])
    new = write_run(tmp_path / "b", [
        ratios_record("more_work", [1.5] * 6, flops={"per_call": 1_000_001}, reuse_ratio=0.5),
        ratios_record("less_reuse", [1.5] * 6, flops={"per_call": 800_000}, reuse_ratio=0.4799),
        ratios_record("better", [1.5] * 6, flops={"per_call": 600_000}, reuse_ratio=0.5),
    ])
    by_case = {c.case: c for c in compare_runs(base, new).changes}
    assert by_case["more_work"].regressions == ["FLOPs per call +0.0% (1,000,000 -> 1,000,001)"]
    assert by_case["less_reuse"].regressions == ["reuse 48.0% -> 48.0%"]
    assert not by_case["better"].regressions
    assert by_case["better"].changes == ["FLOPs per call -25.0% (800,000 -> 600,000)", "reuse 40.0% -> 50.0%"]
    assert compare_runs(base, new).exit_status == 1


# --- quality -------------------------------------------------------------------------------

def test_a_quality_collapse_fails_with_the_default_options(tmp_path, capsys):
    base = write_run(tmp_path / "a", [record("baseline", 1.0, class_accuracy=1.0), record("x", 1.5, seed=1, psnr=30.0, class_accuracy=1.0)])
    new = write_run(tmp_path / "b", [record("baseline", 1.0, seed=2, class_accuracy=1.0), record("x", 1.5, seed=3, psnr=9.0, class_accuracy=1 / 3)])
    assert main(["compare", str(base), str(new)]) == 1
    out = capsys.readouterr().out
    assert "**REGRESSION**: PSNR 30.0 -> 9.0 dB; class accuracy 100.0% -> 33.3%" in out
    assert "PSNR drop over 1 dB; class accuracy drop over 2.0%; FID rise over 50%" in out


def test_quality_defaults_and_overrides(tmp_path):
    base = write_run(tmp_path / "a", [record("x", 1.5, psnr=40.0, class_accuracy=1.0, fidelity={"fid": 150.0})])
    new = write_run(tmp_path / "b", [record("x", 1.5, seed=1, psnr=39.2, class_accuracy=0.99, fidelity={"fid": 220.0})])
    assert compare_runs(base, new).exit_status == 0  # 0.8 dB, 1 point, +47 %: within the defaults
    worse = write_run(tmp_path / "c", [record("x", 1.5, seed=1, psnr=38.9, class_accuracy=0.97, fidelity={"fid": 230.0})])
    [x] = compare_runs(base, worse).changes
    assert x.regressions == ["PSNR 40.0 -> 38.9 dB", "FID 150.000 -> 230.000", "class accuracy 100.0% -> 97.0%"]
    assert main(["compare", str(base), str(new), "--max-fid-rise", "10"]) == 1  # absolute: +70 is over 10
    assert main(["compare", str(base), str(worse), "--max-quality-drop", "off", "--max-fid-rise", "off", "--max-accuracy-drop", "off"]) == 0


def test_non_finite_quality_in_either_run_or_new_timing_is_a_regression_and_base_timing_inconclusive(tmp_path, capsys):
    base = write_run(tmp_path / "a", [record("q", 1.5, psnr=30.0), record("t", 1.5, seed=1), record("b", 1.5, seed=2, psnr=float("nan"))])
    new = write_run(tmp_path / "b", [
        record("q", 1.5, seed=3, psnr=float("nan")),
        record("t", 1.5, seed=4, cold_s=float("inf")),
        record("b", 1.5, seed=5, psnr=30.0),
    ])
    by_case = {c.case: c for c in compare_runs(base, new).changes}
    assert by_case["q"].regressions == ["non-finite quality.psnr_db"]
    assert by_case["t"].regressions == ["non-finite cold_s"]
    assert by_case["b"].regressions == ["failed quality measurement: base quality.psnr_db non-finite"]  # issue 23: either run
    assert main(["compare", str(base), str(new)]) == 1
    only_t = write_run(tmp_path / "c", [record("t", 1.5, seed=5)])
    assert main(["compare", str(new), str(only_t)]) == 3  # a non-finite base timing: "t" cannot be judged


def test_failed_and_one_sided_cases(tmp_path):
    fine = dict(speedup=1.5)
    base = write_run(tmp_path / "a", [
        record("reuse", psnr=40.0, **fine), record("same", psnr="identical", **fine), record("breaks", psnr=30.0, **fine),
        record("gone", psnr=30.0, **fine), record("fixed", status="failed", error="boom"),
    ])
    new = write_run(tmp_path / "b", [
        record("reuse", psnr=38.0, seed=1, **fine), record("same", psnr=55.0, seed=2, **fine),
        record("breaks", status="failed", error="RuntimeError: boom"), record("added", psnr=20.0, **fine),
        record("fixed", psnr=30.0, **fine),
    ])
    by_case = {c.case: c for c in compare_runs(base, new, max_quality_drop=1.5).changes}
    assert by_case["reuse"].regressions == ["PSNR 40.0 -> 38.0 dB"]
    assert by_case["same"].regressions == ["PSNR identical -> 55.0 dB"]  # it used to match the baseline exactly
    assert by_case["breaks"].regressions == ["failed: RuntimeError: boom"]
    assert by_case["gone"].status == "only in base" and not by_case["gone"].regressions and by_case["gone"].verdict == "only in base: not compared"
    assert by_case["added"].status == "only in new" and not by_case["added"].regressions
    assert by_case["fixed"].changes == ["fixed: it failed in the base run"] and not by_case["fixed"].regressions
    assert compare_runs(base, new, max_quality_drop=3.0).changes[0].regressions == []  # under the limit


# --- what a case is ------------------------------------------------------------------------

def test_identity_differences_are_printed_and_strict_fails(tmp_path, capsys):
    changed = identity(steps=20, dqar_bench="0.2.0")
    changed["parts"] = json.loads(json.dumps(changed["parts"]))
    changed["parts"]["gate"]["params"]["every"] = 3
    base = write_run(tmp_path / "a", [ratios_record("x", [1.5] * 6, identity=identity()), ratios_record("y", [2.0] * 6, identity=identity())])
    new = write_run(tmp_path / "b", [ratios_record("x", [1.5] * 6, identity=changed), ratios_record("y", [2.0] * 6, identity=identity())])
    assert main(["compare", str(base), str(new)]) == 0
    out = capsys.readouterr().out
    assert "- x: gate.every: 2 -> 3; steps: 25 -> 20; dqar-bench: 0.1.0 -> 0.2.0\n" in out
    assert "- y:" not in out
    assert main(["compare", str(base), str(new), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "**REGRESSION**: what the case is changed (--strict): " in out and "**1 regression(s)**: x" in out


def test_identity_labels_name_parts_and_versions():
    a = CaseRecord("x", identity())
    b = CaseRecord("x", identity(steps=20))
    b.identity["parts"] = {"gate": {**a.identity["parts"]["gate"], "name": "dqar", "version": "0.3.0"},
                           "cache": {"name": "kv", "params": {}}}
    assert identity_diff(a, b) == (["gate: interval -> dqar", "gate version: 0.1.0 -> 0.3.0", "steps: 25 -> 20", "cache: (none) -> kv"], True)
    untouched = CaseRecord("x", {"parts": {}})
    assert identity_diff(untouched, CaseRecord("x", {"parts": {"gate": {"name": "never", "params": {"x": 1}}}}))[0] == [
        "gate: (none) -> never", "gate.x: (none) -> 1"
    ]


def test_records_without_identity_compare_their_fields(tmp_path):
    base = write_run(tmp_path / "a", [ratios_record("x", [1.5] * 6, steps=25, parts={"gate": {"name": "interval", "params": {"every": 2}}})])
    new = write_run(tmp_path / "b", [ratios_record("x", [1.5] * 6, steps=20, parts={"gate": {"name": "interval", "params": {"every": 3}}})])
    comparison = compare_runs(base, new)
    assert comparison.changes[0].identity == ["gate.every: 2 -> 3", "steps: 25 -> 20"]
    assert any("no `identity` recorded" in n for n in comparison.notes)


# --- the command ---------------------------------------------------------------------------

def test_user_errors_exit_2_in_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), str(tmp_path / "nope2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no records.jsonl" in err
    run = write_run(tmp_path / "a", [ratios_record("x", [1.5] * 6)])
    for option in (["--max-slowdown", "lots"], ["--max-fid-rise", "much"], ["--max-quality-drop", "-1"], ["--alpha", "2"]):
        assert main(["compare", str(run), str(run), *option]) == 2
        assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("round_s", ["1.0"] * 6, "field 'round_s' must be a list of (a number) or null, got ['1.0'"),
        ("flops", [1, 2], "field 'flops' must be a mapping or null, got [1, 2]"),
        ("quality", "psnr 30", "field 'quality' must be a mapping or null, got 'psnr 30'"),
        ("fidelity", {"fid": "12.5"}, "field 'fidelity.fid' must be a number, got '12.5'"),
        ("flops", {"per_call": "1e9"}, "field 'flops.per_call' must be a number, got '1e9'"),
        ("reuse_map", {"0": [1]}, "field 'reuse_map' must be a list of (a list of (an integer)) or null"),
        ("batch", "2", "field 'batch' must be an integer, got '2'"),
        ("case", 7, "case 7: field 'case' must be text, got 7"),
    ],
)
def test_records_of_the_wrong_shape_are_one_line_naming_file_case_and_field(tmp_path, capsys, field, value, said):
    good = write_run(tmp_path / "a", [ratios_record("x", [1.5] * 6)])
    bad = write_run(tmp_path / "b", [{**ratios_record("x", [1.5] * 6), field: value}])
    for argv in ([str(good), str(bad)], [str(bad), str(good)]):  # either side
        assert main(["compare", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"error: {bad / 'records.jsonl'}: case ") and said in err, err


def test_benchmark_entries_include_flops_energy_and_memory_when_recorded():
    rec = record("x", energy={"joules_per_image": 1.5}, memory={"torch_peak_reserved_bytes": 3 * 2**20},
                 latency_s=[0.2, 0.4], flops={"per_call": 2_000_000_000})
    entries = {e["name"]: e for e in benchmark_entries({"x": CaseRecord.from_json(rec)})}
    assert entries["s/x energy per image"]["value"] == 1.5 and entries["s/x energy per image"]["unit"] == "J"
    assert entries["s/x peak memory"]["value"] == 3.0
    assert entries["s/x time per image"]["value"] == pytest.approx(150.0)
    assert entries["s/x TFLOP per call"]["value"] == pytest.approx(0.002)


# --- through the runner: a part that spins a known time per call ---------------------------

CLOCK = synthetic.VirtualClock()


@dataclass
class Spin(Gate):
    """Never reuses; spends `delay` seconds of the (virtual) clock at every decision."""

    PLUGIN_NAME = "spin"

    delay: float = field(default=0.0, metadata={"help": "seconds per decision"})

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        CLOCK.advance(self.delay)
        return [False] * len(eligible)


class SpinPlugin:
    @hookimpl
    def register_gates(self):
        return [Spin]


SUITE = """\
name: gate
model: fixed-cost
sampler: {{name: ddim, steps: 4, guidance_scale: 4.0}}
class_labels: [1, 2]
seeds: [0]
device: cpu
timing: {{warmup: 1, repeats: 6}}
cases:
  - name: baseline
  - name: spun
    gate: {{name: spin, delay: {delay}}}
"""


@pytest.fixture()
def make_run(tmp_path, monkeypatch):
    """A run of the fixed-cost model on a virtual clock, with 1 % jitter per call."""
    monkeypatch.setattr(timing, "_clock", CLOCK)
    registry = load_registry(autoload=False, extra_plugins=(SpinPlugin(),))

    def make(name, seed, delay=0.0):
        path = tmp_path / f"{name}.yaml"
        path.write_text(SUITE.format(delay=delay))
        monkeypatch.setitem(
            models.BUILTIN_MODELS, "fixed-cost",
            lambda: synthetic.build(blocks=2, attention_s=0.02, mlp_s=0.005, clock=CLOCK, jitter=0.01, seed=seed),
        )
        return run_suite(load_suite(path, registry), tmp_path / name, registry=registry, progress=lambda line: None).path

    return make


def test_runner_identical_runs_compare_clean(make_run, tmp_path, capsys):
    base, new = make_run("base", seed=1), make_run("new", seed=2)
    out = tmp_path / "bench.json"
    assert main(["compare", str(base), str(new), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "**no regression**" in printed and "| spun |" in printed
    names = {e["name"] for e in json.loads(out.read_text())}
    assert {"gate/baseline time per image", "gate/spun time per image"} <= names


@pytest.mark.slow
def test_runner_a_part_that_spins_twenty_percent_longer_is_caught(make_run, capsys):
    call_s = synthetic.expected_call_s(4, 2, 0.02, 0.005)
    decisions = 3  # steps 1..3: once the cache holds something, the gate is asked every step
    base = make_run("base", seed=1)
    slow = make_run("slow", seed=3, delay=0.2 * call_s / decisions)
    assert main(["compare", str(base), str(slow)]) == 1
    printed = capsys.readouterr().out
    assert "**1 regression(s)**: spun" in printed and "gate.delay: 0.0 -> " in printed
