"""`dqar-bench compare` as a CI gate: identical runs pass, a 20 % slowdown fails."""

from __future__ import annotations

import json

import pytest

from dqar_bench import models, timing
from dqar_bench.cli import main
from dqar_bench.measure import synthetic
from dqar_bench.measure.compare import benchmark_entries, compare_runs
from dqar_bench.runner import run_suite
from dqar_bench.suite import load_suite

SUITE = """\
name: gate
model: fixed-cost
sampler: {name: ddim, steps: 4, guidance_scale: 4.0}
class_labels: [1, 2]
seeds: [0, 1, 2]
device: cpu
timing: {warmup: 1, repeats: 2}
cases:
  - name: baseline
  - name: every2
    gate: {name: interval, every: 2}
"""


@pytest.fixture()
def make_run(tmp_path, monkeypatch, registry):
    """A run of the fixed-cost model on a virtual clock, with 2 % jitter per step."""
    clock = synthetic.VirtualClock()
    monkeypatch.setattr(timing, "_clock", clock)
    path = tmp_path / "gate.yaml"
    path.write_text(SUITE)

    def make(name, seed, scale=1.0):
        monkeypatch.setitem(
            models.BUILTIN_MODELS, "fixed-cost",
            lambda: synthetic.build(blocks=2, attention_s=0.02, mlp_s=0.005, clock=clock, jitter=0.02, seed=seed, scale=scale),
        )
        return run_suite(load_suite(path, registry), tmp_path / name, registry=registry, progress=lambda line: None).path

    return make


def test_identical_runs_compare_clean(make_run, tmp_path, capsys):
    base, new = make_run("base", seed=1), make_run("new", seed=2)
    out = tmp_path / "bench.json"
    assert main(["compare", str(base), str(new), "--max-slowdown", "5%", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "**no regression**" in printed and "| every2 |" in printed
    entries = json.loads(out.read_text())
    names = {e["name"] for e in entries}
    assert {"gate/baseline time per image", "gate/every2 time per image"} <= names
    for e in entries:
        assert set(e) <= {"name", "unit", "value", "range", "extra"} and isinstance(e["value"], (int, float))
    per_image = next(e for e in entries if e["name"] == "gate/baseline time per image")
    assert per_image["unit"] == "ms" and per_image["value"] == pytest.approx(synthetic.expected_call_s(4, 2, 0.02, 0.005) * 1000 / 2, rel=0.05)


def test_twenty_percent_slowdown_is_flagged(make_run, capsys):
    base, slow = make_run("base", seed=1), make_run("slow", seed=3, scale=1.2)
    assert main(["compare", str(base), str(slow)]) == 1
    printed = capsys.readouterr().out
    assert printed.count("**REGRESSION**: +") == 2 and "2 regression(s)" in printed
    comparison = compare_runs(base, slow)
    for change in comparison.changes:
        assert change.change == pytest.approx(0.2, abs=0.03) and change.p_value < 0.01
    # past the threshold is not enough: allow 25 % and it passes
    assert main(["compare", str(base), str(slow), "--max-slowdown", "25%"]) == 0


def write_run(path, records):
    path.mkdir()
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def record(case, samples, psnr=None, status="ok", **extra):
    quality = None if psnr is None else {"psnr_db": None if psnr == "identical" else psnr, "identical": psnr == "identical", "mse": 0.1}
    return {"case": case, "suite": "s", "status": status, "batch": 2, "latency_s": samples, "quality": quality, **extra}


def test_a_slowdown_within_noise_is_not_a_regression(tmp_path):
    base = write_run(tmp_path / "a", [record("x", [1.0, 1.3, 0.8, 1.1, 0.9, 1.2])])
    new = write_run(tmp_path / "b", [record("x", [1.2, 1.0, 1.4, 0.9, 1.3, 1.1])])
    change = compare_runs(base, new).changes[0]
    assert change.change > 0.05 and change.p_value > 0.01 and change.verdict == "slower? (not significant)" and not change.regressions


def test_quality_drop_failure_and_case_sets(tmp_path, capsys):
    fast = [0.10, 0.11, 0.10, 0.12, 0.11, 0.10]
    base = write_run(tmp_path / "a", [
        record("baseline", fast), record("reuse", fast, psnr=40.0), record("same", fast, psnr="identical"),
        record("breaks", fast, psnr=30.0), record("gone", fast, psnr=30.0),
    ])
    new = write_run(tmp_path / "b", [
        record("baseline", fast), record("reuse", fast, psnr=38.0), record("same", fast, psnr=55.0),
        record("breaks", [], status="failed", error="RuntimeError: boom"), record("added", fast, psnr=20.0),
    ])
    assert main(["compare", str(base), str(new), "--max-quality-drop", "1.5"]) == 1
    comparison = compare_runs(base, new, max_quality_drop=1.5)
    by_case = {c.case: c for c in comparison.changes}
    assert by_case["reuse"].regressions == ["PSNR 40.0 -> 38.0 dB"]
    assert by_case["same"].regressions == ["PSNR identical -> 55.0 dB"]  # it used to match the baseline exactly
    assert by_case["breaks"].regressions == ["failed: RuntimeError: boom"]
    assert by_case["gone"].status == "only in base" and not by_case["gone"].regressions
    assert by_case["added"].status == "only in new" and not by_case["added"].regressions
    assert not by_case["baseline"].regressions
    assert compare_runs(base, new, max_quality_drop=3.0).changes[1].regressions == []  # under the limit


def test_too_few_samples_are_called_out(tmp_path):
    base = write_run(tmp_path / "a", [record("x", [1.0, 1.0, 1.0])])
    new = write_run(tmp_path / "b", [record("x", [2.0, 2.0, 2.0])])
    comparison = compare_runs(base, new)
    assert not comparison.regressed  # three samples each can never reach p < 0.01
    assert any("too few samples" in n for n in comparison.notes)


def test_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), str(tmp_path / "nope2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no records.jsonl" in err
    assert main(["compare", str(tmp_path), str(tmp_path), "--max-slowdown", "lots"]) == 2


def test_benchmark_entries_include_energy_and_memory_when_recorded():
    rec = record("x", [0.2, 0.4], energy={"joules_per_image": 1.5}, memory={"torch_peak_reserved_bytes": 3 * 2**20})
    entries = {e["name"]: e for e in benchmark_entries({"x": rec})}
    assert entries["s/x energy per image"]["value"] == 1.5 and entries["s/x energy per image"]["unit"] == "J"
    assert entries["s/x peak memory"]["value"] == 3.0
    assert entries["s/x time per image"]["value"] == pytest.approx(150.0)
