"""Views: the table's statistics and notes, the Pareto plot, the environment, progress."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dqar_bench.cli import main
from dqar_bench.measure import environment, rss
from dqar_bench.measure.case_record import SCHEMA_VERSION, CaseRecord
from dqar_bench.measure.progress import Progress, eta
from dqar_bench.measure.records import RunDir
from dqar_bench.views.plot import plot_run
from dqar_bench.views.table import render_markdown, results_frame
from tests.conftest import SMALL_SUITE_HEAD


def rec(case, samples, batch=2, **extra):
    return CaseRecord.from_json({"case": case, "status": "ok", "batch": batch, "latency_s": samples, "median_s": sorted(samples)[len(samples) // 2],
                                 "per_image_s": sorted(samples)[len(samples) // 2] / batch, "parts": {}, **extra})


def test_frame_statistics_speedup_interval_and_comparability():
    base = rec("baseline", [1.0, 1.02, 0.98, 1.01, 0.99])
    fast = rec("fast", [0.5, 0.52, 0.49, 0.5, 0.51], quality={"psnr_db": 30.0, "identical": False, "mse": 0.1, "ssim": 0.9, "space": "latent"})
    other = rec("other-batch", [0.5, 0.5], batch=4)
    frame = results_frame([base, fast, other], "baseline").set_index("case")
    assert frame.loc["fast", "median_ms"] == pytest.approx(500.0)
    assert frame.loc["fast", "p10_ms"] < frame.loc["fast", "median_ms"] < frame.loc["fast", "p90_ms"]
    assert frame.loc["fast", "speedup"] == pytest.approx(2.0)
    assert frame.loc["fast", "speedup_low"] < 2.0 < frame.loc["fast", "speedup_high"]
    assert frame.loc["fast", "noise"] == "ok"
    assert math.isnan(frame.loc["other-batch", "speedup"]) or frame.loc["other-batch", "speedup"] is None
    assert "batch" in frame.loc["other-batch", "speedup_note"]


def test_noisy_case_is_flagged_in_the_table():
    frame = results_frame([rec("baseline", [1.0, 1.0, 1.0, 1.0]), rec("shaky", [0.5, 1.0, 1.0, 1.8])], "baseline")
    table = render_markdown(frame)
    assert "| unreliable |" in table and "noise: IQR / median of the case's timed calls: over 10% noisy, over 25% unreliable." in table


def test_cpu_run_table_says_na_for_gpu_columns_and_records_rss(write_suite, tmp_path):
    path = write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: iv\n    gate: {name: interval, every: 2}\n")
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    run = RunDir(out)
    iv = run.records()[1]
    assert iv.memory["peak_rss_bytes"] > 0 and iv.memory["device_used_peak_bytes"] is None
    assert iv.energy["joules_per_image"] is None
    assert iv.latency["n"] == 1 and iv.timer == "perf_counter" and len(iv.step_s[0]) == 6
    env = run.environment_of(iv)
    for key in ("gpu", "driver", "cuda", "torch", "diffusers", "dqar_bench", "git_commit", "dtype", "attention_backend", "cpu", "seeds", "suite_hash"):
        assert key in env
    assert env["suite_hash"] == iv.suite_hash and env["seeds"] == [0]
    # stored once for the run: one file, which every record names (no copy in the lines)
    (kept,) = out.glob("environment*.json")
    assert json.loads(kept.read_text())["torch"] == torch.__version__
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {line["environment"] for line in lines} == {kept.name} and all(line["schema_version"] == SCHEMA_VERSION for line in lines)
    table = (out / "table.md").read_text()
    assert "| baseline | n/a | n/a | n/a | n/a |" in table  # NVML, process, torch allocator, energy
    assert "n/a: no GPU" in table and "LPIPS column left out" in table
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_marks_baseline_and_places_identical_cases(tmp_path):
    base = rec("baseline", [1.0, 1.0])
    same = rec("same", [1.0, 1.01], quality={"psnr_db": None, "identical": True})
    fast = rec("fast", [0.5, 0.5], quality={"psnr_db": 30.0, "identical": False})
    frame = results_frame([base, same, fast], "baseline")
    assert plot_run(frame, tmp_path / "p.png", "t") == tmp_path / "p.png"
    assert (tmp_path / "p.png").stat().st_size > 1000
    only_failed = results_frame([CaseRecord.from_json({"case": "baseline", "status": "failed", "error": "x"})], "baseline")
    assert "skipped" in plot_run(only_failed, tmp_path / "q.png")


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    frame = results_frame([rec("baseline", [1.0])], "baseline")
    assert plot_run(frame, tmp_path / "p.png") == "skipped: matplotlib is not installed"


def test_environment_on_the_cpu(tiny):
    env = environment.collect(torch.device("cpu"), "float32", [0, 1], "abc", tiny.transformer)
    assert env["gpu"] is None and env["torch"] == torch.__version__ and env["attention_backend"]
    assert env["seeds"] == [0, 1] and env["suite_hash"] == "abc" and env["dtype"] == "float32"
    commit, dirty = environment.git_commit(environment.PACKAGE_ROOT)
    assert commit is None or len(commit) == 40


def test_peak_rss_resets_per_case_where_allowed():
    scope = rss.reset_peak()
    before = rss.peak_bytes()
    blob = bytearray(64 * 2**20)
    blob[::4096] = b"x" * len(blob[::4096])  # touch every page
    assert rss.peak_bytes() >= before + 60 * 2**20
    del blob
    if scope == "case":
        rss.reset_peak()
        assert rss.peak_bytes() < before + 60 * 2**20


def test_progress_counts_calls_and_stays_quiet_off_a_terminal(capsys):
    shown = Progress(5, show=True)
    said = []
    say = shown.wrap(said.append)
    shown.case("baseline")
    shown.tick(3)
    say("line")
    assert shown._bar.n == 3 and said == ["line"]
    shown.close()
    hidden = Progress(5, show=False)
    hidden.tick()
    hidden.grow(9)  # no bar: nothing to raise, no error
    assert hidden.wrap(print) is print


def test_progress_total_grows_and_eta_reads_in_plain_units():
    bar = Progress(2, show=True)
    bar.tick()
    bar.grow(40)
    assert bar._bar.total == 40
    bar.close()
    assert eta(0, 10, 0.0) == "time left unknown"
    assert eta(1, 4, 10.0) == "about 30 s left"
    assert eta(1, 31, 60.0) == "about 30 min left"
    assert eta(1, 3, 7200.0) == "about 4.0 h left"
    assert eta(5, 5, 3.0) == "0 s left"
