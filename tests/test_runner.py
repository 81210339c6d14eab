"""The runner end to end: records on disk, tables, failure isolation, --resume."""

from __future__ import annotations

import pandas as pd
import pytest

from dqar_bench.cli import main
from dqar_bench.measure.records import RunDir
from tests.conftest import SMALL_SUITE_HEAD

CASES = """
cases:
  - name: baseline
  - name: overhead
    gate: never
  - name: iv
    gate: {name: interval, every: 2}
"""


def test_run_writes_records_csv_and_table(write_suite, tmp_path, capsys):
    path = write_suite(SMALL_SUITE_HEAD + CASES)
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = (out / "records.jsonl").read_text().splitlines()
    records = RunDir(out).records()
    assert len(records) == len(lines)
    assert [r.case for r in records] == ["baseline", "overhead", "iv"]
    assert all(r.status == "ok" and len(r.latency_s) == 1 for r in records)
    assert records[1].quality["identical"] is True  # never-reuse goes through the harness, exactly
    assert records[2].quality["psnr_db"] > 0 and records[2].reuse_ratio == pytest.approx(0.5)
    csv = pd.read_csv(out / "results.csv")
    assert list(csv["case"]) == ["baseline", "overhead", "iv"]
    assert csv.loc[csv.case == "baseline", "speedup"].item() == pytest.approx(1.0)
    table = (out / "table.md").read_text()
    assert "| iv | interval(every=2) / attention-output / none / all |" in table
    assert "| iv       |" in printed and "speedup [95% CI]" in printed  # the table is printed, padded
    assert max(len(line) for line in printed.splitlines() if line.startswith("|")) <= 120  # cut to a terminal; table.md has it all
    assert max(len(line) for line in table.splitlines()) > 120




@pytest.mark.slow
def test_failing_case_is_recorded_and_suite_goes_on(write_suite, tmp_path, monkeypatch):
    from dqar_bench.runs import case_run

    real = case_run.build_strategy

    def build(case, registry, probe_queries=16):
        if case.name == "overhead":
            raise RuntimeError("part exploded")
        return real(case, registry, probe_queries)

    monkeypatch.setattr(case_run, "build_strategy", build)
    path = write_suite(SMALL_SUITE_HEAD + CASES)
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 1  # a failed case makes the exit non-zero
    records = {r.case: r for r in RunDir(out).records()}
    assert records["overhead"].status == "failed"
    assert records["overhead"].error == "RuntimeError: part exploded"
    assert records["iv"].status == "ok"
    assert "failed: RuntimeError: part exploded" in (out / "table.md").read_text()


@pytest.mark.slow
def test_resume_skips_recorded_cases_and_still_compares(write_suite, tmp_path, monkeypatch):
    path = write_suite(SMALL_SUITE_HEAD + CASES)
    out = tmp_path / "run"
    first = RunDir(out)
    # a previous run that finished the baseline and crashed in the middle of 'overhead'
    assert main(["run", str(write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n", "first.yaml")), "-o", str(out)]) == 0
    with open(first.records_path, "a") as fh:
        fh.write('{"case": "overhead", "status": "o')  # torn line
    ran = prepared(monkeypatch)
    assert main(["run", str(path), "--resume", str(out)]) == 0
    assert ran == ["baseline (partner)", "overhead", "iv"]  # the baseline is timed again beside them, not recorded again
    finished = RunDir(out).finished()
    assert set(finished) == {"baseline", "overhead", "iv"}
    assert finished["overhead"].quality["identical"] is True  # baseline outputs came from disk


def prepared(monkeypatch):
    """The cases a run prepares, in order (a partner is a finished baseline timed again)."""
    from dqar_bench.runs import case_run

    ran = []
    real = case_run.CaseRun.prepare

    def prepare(self, *a, **k):
        ran.append(self.case.name + (" (partner)" if self.partner else ""))
        return real(self, *a, **k)

    monkeypatch.setattr(case_run.CaseRun, "prepare", prepare)
    return ran


def test_existing_run_dir_is_not_overwritten(write_suite, tmp_path, capsys):
    path = write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n")
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "-o", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert len(RunDir(out).records()) == 1


def test_bad_suite_runs_nothing(write_suite, tmp_path, capsys):
    path = write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: x\n    gate: nope\n")
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown gate 'nope'" in err
    assert not (tmp_path / "run").exists()


def test_missing_checkpoint_is_one_line(write_suite, tmp_path, capsys):
    path = write_suite(SMALL_SUITE_HEAD.replace("model: dit-tiny", "model: nobody/no-such-dit") + "cases:\n  - name: baseline\n")
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not available offline" in err and "nobody/no-such-dit" in err


def test_plugins_command_lists_every_kind(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for fragment in ("schedulers:", "gates:", "caches:", "quantizers:", "interval", "every: int = 2", "dqar-bench (built-in)"):
        assert fragment in out
