"""One column catalogue for every view; noise means one thing; implausible speedups flagged;
`compare` says first when the runs are not of the same model, sampler or device."""

from __future__ import annotations

import shutil
from pathlib import Path

from dqar_bench.cli import main
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.records import RunDir
from dqar_bench.views import columns
from dqar_bench.views.compare import compare_runs, render_comparison
from dqar_bench.views.report import summary
from dqar_bench.views.table import render_markdown, results_frame

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "ci" / "reference"


def rec(case: str, calls: list[float], rounds: list[float] | None = None, base_rounds: list[float] | None = None, **extra) -> CaseRecord:
    return CaseRecord.from_json({"case": case, "status": "ok", "batch": 1, "latency_s": calls, "median_s": sorted(calls)[len(calls) // 2],
                                 "per_image_s": sorted(calls)[len(calls) // 2], "round_s": rounds, "baseline_round_s": base_rounds, **extra})


NEVER = {"gate": {"name": "never", "params": {}}, "cache": {"name": "attention-output", "params": {}}}


def _frame(never_ratio: float, reused: int = 0):
    base_rounds = [1.0, 1.0, 1.0, 1.0, 1.0]
    base = rec("baseline", [1.0] * 5, base_rounds, base_rounds, parts={}, reused=0, evaluations=0)
    rounds = [1.0 / never_ratio] * 5
    never = rec("harness_overhead", rounds, rounds, base_rounds, parts=NEVER, reused=reused, evaluations=48)
    return results_frame([base, never], "baseline").set_index("case")


def test_a_never_reuse_case_faster_than_the_baseline_is_flagged_with_the_reason():
    frame = _frame(1.23)
    reason = frame.loc["harness_overhead", "implausible"]
    assert reason.startswith("1.23x is implausible: the case reused nothing (0 of 48 block evaluations)")
    assert not isinstance(frame.loc["baseline", "implausible"], str)
    table = render_markdown(frame.reset_index())
    row = next(line for line in table.splitlines() if line.startswith("| harness_overhead |"))  # the time table's
    assert "1.23x [1.23, 1.23] (implausible)" in row and f"- harness_overhead: {reason}." in table
    html = summary._speedup(frame.loc["harness_overhead", "speedup"], frame.loc["harness_overhead"].to_dict())
    assert "implausible" in html and "reused nothing" in html
    assert not isinstance(_frame(1.04).loc["harness_overhead", "implausible"], str)  # within noise of 1x
    assert not isinstance(_frame(1.23, reused=12).loc["harness_overhead", "implausible"], str)  # it did reuse: it may be faster


def test_every_view_takes_its_headings_and_tooltips_from_the_catalogue():
    frame = results_frame(RunDir(REFERENCE / "digits-dit").records(), "baseline")
    assert list(frame.columns) == columns.FRAME_COLUMNS
    for key, heading, _, tip in summary.COLUMNS:
        assert heading == columns.column(key).header and tip == columns.column(key).tip
    table = render_markdown(frame)
    for key in ("median_ms", "per_image_ms", "speedup", "tflop_per_call", "reuse_ratio", "psnr_db", "cold_ms", "class_accuracy", "fid"):
        assert f" {columns.column(key).header} |" in table
    tip = columns.column("speedup").tip
    assert "median of per-round ratios" in tip and "median / case median" not in tip  # what the records hold


def test_noise_is_the_spread_of_the_timed_calls_in_the_table_and_in_compare(tmp_path):
    base = REFERENCE / "digits-dit"
    comparison = compare_runs(base, base)
    frame = results_frame(RunDir(base).records(), "baseline").set_index("case")
    for change in comparison.changes:
        assert change.noise_base == change.noise_new == frame.loc[change.case, "noise"]
    assert " | noise base -> new | " in render_comparison(comparison)


def test_compare_says_first_that_the_runs_are_of_different_models_and_samplers(capsys):
    main(["compare", str(REFERENCE / "digits-dit"), str(REFERENCE / "digits-flow")])
    out = capsys.readouterr().out
    warning = out.index("**The runs are of different models and samplers**: model: digits-dit -> digits-flow; sampler: ddim -> flow-euler.")
    assert warning < out.index("| case |") and warning < out.index("regression")


def test_compare_says_nothing_of_the_kind_for_runs_of_one_model(tmp_path, capsys):
    run = tmp_path / "again"
    shutil.copytree(REFERENCE / "digits-dit", run, ignore=shutil.ignore_patterns("outputs", "*.png", "*.html"))
    main(["compare", str(REFERENCE / "digits-dit"), str(run)])
    assert "The runs are of different" not in capsys.readouterr().out
