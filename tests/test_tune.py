"""`dqar-bench tune`: the trials file (written, resumed), floors as feasibility, the tuned suite, bad input."""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dqar_bench.cli import main
from dqar_bench.config.suite import load_suite
from dqar_bench.core.parts import Gate
from dqar_bench.core.plugins import get_registry
from dqar_bench.runs import tune as tune_module
from dqar_bench.runs.tune import declared_space
from tests.conftest import SMALL_SUITE_HEAD

pytest.importorskip("optuna")

CASES = """\
cases:
  - name: baseline
  - name: every
    gate: {name: interval, every: 2}
    cache: attention-output
  - name: always
    gate: always
    cache: attention-output
"""


@pytest.fixture()
def suite_file(write_suite):
    return write_suite(SMALL_SUITE_HEAD + CASES)


def read_trials(folder: Path) -> list[dict[str, str]]:
    with (folder / "trials.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_trials_are_written_and_a_second_run_resumes_them(suite_file, tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", str(suite_file), "--case", "every", "--trials", "2", "-o", str(out)]) == 0
    first = (out / "trials.csv").read_text()
    rows = read_trials(out)
    assert [r["trial"] for r in rows] == ["1", "2"]
    assert rows[0]["gate.every"] == "2"  # trial 1 is the case as written
    for r in rows:
        assert r["status"] == "ok" and 1 <= int(r["gate.every"]) <= 6  # interval's declared range
        assert float(r["speedup"]) >= 1.0 and r["psnr"] != ""
    capsys.readouterr()

    assert main(["tune", str(suite_file), "--case", "every", "--trials", "3", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "1 trial(s) to run" in said and "trial 3/3" in said and "trial 1/3" not in said
    assert (out / "trials.csv").read_text().startswith(first)  # the old trials kept as they were, one appended
    assert [r["trial"] for r in read_trials(out)] == ["1", "2", "3"]


def test_a_floor_marks_trials_infeasible_and_picks_only_those_that_meet_it(suite_file, tmp_path, capsys):
    out = tmp_path / "tune"
    # every=1 computes every step (identical: infinite PSNR); every>1 has a finite PSNR, far below 1000 dB
    assert main(["tune", str(suite_file), "--case", "every", "--trials", "4", "-o", str(out), "--space", "gate.every=1:3", "--min-psnr", "1000"]) == 0
    rows = read_trials(out)
    for r in rows:
        assert r["feasible"] == str(float(r["psnr"]) >= 1000), r
    assert any(r["feasible"] == "False" for r in rows)
    said = capsys.readouterr().out
    feasible = [r for r in rows if r["feasible"] == "True"]
    if feasible:
        assert "psnr>=1000: trial" in said
        assert all(r["gate.every"] == "1" for r in feasible)
    else:
        assert "psnr>=1000: no trial meets it" in said


def test_a_setting_the_part_refuses_is_a_failed_trial_and_the_search_goes_on(suite_file, tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", str(suite_file), "--case", "every", "--trials", "4", "-o", str(out), "--space", "gate.every=0:1"]) == 0
    rows = read_trials(out)
    assert len(rows) == 4
    for r in rows:
        if r["gate.every"] == "0":  # interval refuses N < 1
            assert r["status"] == "failed" and "every" in r["error"] and r["speedup"] == ""
        else:
            assert r["status"] == "ok" and float(r["psnr"]) == math.inf  # every=1 computes every step
    assert main(["tune", str(suite_file), "--case", "every", "--trials", "5", "-o", str(out), "--space", "gate.every=0:1"]) == 0  # failed rows resume too
    assert len(read_trials(out)) == 5


def test_the_tuned_suite_validates_and_runs(suite_file, tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", str(suite_file), "--case", "every", "--trials", "3", "-o", str(out), "--min-psnr", "4", "5", "--seeds", "5"]) == 0
    assert json.loads((out / "tune.json").read_text())["seeds"] == [5]  # tuned on seeds apart from the suite's
    tuned = out / "tuned.yaml"
    assert (out / "pareto.png").stat().st_size > 0
    suite = load_suite(tuned)
    names = [c.name for c in suite.cases]
    best = max((r for r in read_trials(out) if r["feasible"] == "True"), key=lambda r: (float(r["speedup"]), float(r["psnr"])))
    if best["gate.every"] == "2":  # the case as written is the pick: not written twice
        assert names == ["baseline", "every"]
    else:
        assert names == ["baseline", "every", "every-psnr-min5"]  # two floors met by one trial: one case
        assert suite.case("every-psnr-min5").parts["gate"].params["every"] == int(best["gate.every"])
    assert suite.seeds == load_suite(suite_file).seeds == [0]  # which `run` measures: held out from the search
    run = tmp_path / "run"
    assert main(["run", str(tuned), "-o", str(run)]) == 0
    assert all(name in (run / "results.csv").read_text() for name in names)


def test_pareto_front_and_best_for_a_floor():
    psnr = tune_module.METRICS["psnr"]
    rows = [
        {"trial": 1, "status": "ok", "speedup": 1.0, "psnr": math.inf},
        {"trial": 2, "status": "ok", "speedup": 2.0, "psnr": 30.0},
        {"trial": 3, "status": "ok", "speedup": 1.5, "psnr": 25.0},  # beaten by trial 2 on both
        {"trial": 4, "status": "ok", "speedup": 3.0, "psnr": 20.0},
        {"trial": 5, "status": "failed"},
    ]
    assert [r["trial"] for r in tune_module.pareto_front(rows, psnr)] == [4, 2, 1]
    assert tune_module.best_for(rows, tune_module.Floor("psnr", 28))["trial"] == 2
    assert tune_module.best_for(rows, tune_module.Floor("psnr", 1e9))["trial"] == 1
    rows[3]["ssim"], rows[1]["ssim"] = 0.5, 0.9  # a floor on another metric: the pick must meet its loosest floor too
    floors = [tune_module.Floor("psnr", 10), tune_module.Floor("ssim", 0.8), tune_module.Floor("ssim", 0.95)]
    assert tune_module.best_for(rows, floors[0], floors)["trial"] == 2
    assert tune_module.best_for(rows, floors[0])["trial"] == 4
    lpips = tune_module.Floor("lpips", 0.1)  # a ceiling: lower is better
    assert lpips.violation(0.05) == 0 and lpips.violation(0.3) == pytest.approx(0.2) and lpips.violation(None) == math.inf


def test_the_space_is_read_from_declared_ranges(suite_file):
    registry = get_registry()
    case = load_suite(suite_file).case("every")
    [dim] = declared_space(case, registry)
    assert (dim.key, dim.low, dim.high, dim.integer) == ("gate.every", 1, 6, True)
    params = {p.name: p.range for p in registry.get("gate", "dqar").cls.parameters()}
    assert params["threshold"] is not None and params["snr_low"] is None


def test_a_part_declaring_an_empty_range_is_refused():
    @dataclass
    class Bad(Gate):
        PLUGIN_NAME = "bad-range"
        threshold: float = field(default=0.5, metadata={"help": "x", "range": (1.0, 0.0)})

    with pytest.raises(TypeError, match="low < high"):
        Bad.parameters()


# --- bad input: one line, exit 2, nothing measured ----------------------------------------------

@pytest.fixture()
def nothing_measured(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a refused tune")

    from dqar_bench.runs import suite_model

    monkeypatch.setattr(suite_model, "load_model", refuse)  # where every command loads the suite's model


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--case", "evry"], "no case 'evry' in the suite; did you mean 'every'?"),
        (["--case", "baseline"], "'baseline' is the baseline"),
        (["--case", "always"], "case 'always': no tunable parameter"),
        (["--case", "every", "--space", ","], "names no parameter, so there is nothing to search"),
        (["--case", "every", "--space", "gate.every=3:3"], "the low bound must be below the high one"),
        (["--case", "every", "--space", "gate.evry=1:3"], "has no parameter 'evry' (did you mean 'every'?)"),
        (["--case", "every", "--space", "scheduler.layer_fraction=0:1"], "scheduler 'all' has no parameter 'layer_fraction'"),
        (["--case", "every", "--space", "gate.anchor=0:1"], "only numeric parameters can be searched"),
        (["--case", "every", "--space", "gate.every"], "is not KIND.PARAM=LOW:HIGH"),
        (["--case", "every", "--trials", "0"], "--trials: 0 runs nothing"),
        (["--case", "every", "--objective", "speed"], "unknown objective 'speed'"),
        (["--case", "every", "--quality", "fid"], "unknown quality 'fid'"),
        (["--case", "every", "--quality", "lpips"], "field 'quality.lpips'"),
        (["--case", "every", "--min-accuracy", "0.9"], "field 'quality.classifier'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(suite_file, tmp_path, capsys, nothing_measured, extra, expected):
    out = tmp_path / "tune"
    assert main(["tune", str(suite_file), *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not out.exists()


def test_without_optuna_the_error_names_the_extra(suite_file, tmp_path, capsys, monkeypatch, nothing_measured):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["tune", str(suite_file), "--case", "every", "-o", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dqar-bench[tune]" in err


def test_resuming_another_search_in_the_same_folder_is_refused(suite_file, tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", str(suite_file), "--case", "every", "--trials", "1", "-o", str(out)]) == 0
    before = (out / "trials.csv").read_text()
    capsys.readouterr()
    assert main(["tune", str(suite_file), "--case", "every", "--trials", "2", "-o", str(out), "--objective", "time"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its trials are of another search (objective differ)" in err
    assert (out / "trials.csv").read_text() == before
