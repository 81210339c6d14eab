"""`dqar-bench calibrate`: thresholds found for a target reuse, read back by a suite, and every way a calibration is refused."""

from __future__ import annotations

import json
import math

import pytest

from dqar_bench.cli import main
from dqar_bench.config import calibration as calib
from dqar_bench.config.identity import case_identity
from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import SuiteError
from dqar_bench.core.plugins import get_registry
from dqar_bench.runs.calibrate import _closest

HEAD = """\
name: cal
model: dit-tiny
sampler: {name: ddim, steps: 8, guidance_scale: 4.0}
class_labels: [1, 2]
seeds: [0]
device: cpu
timing: {warmup: 0, repeats: 1}
calibration: cal.json
baseline: baseline
cases:
  - name: baseline
"""
ENTROPY = """\
  - name: entropy
    gate: {name: entropy, threshold: {calibrated: 0.5}}
    cache: attention-output
"""
FBC = """\
  - name: fbc
    gate: {name: residual-change, threshold: {calibrated: 0.3}}
    cache: block-residual
"""


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """One calibration of two cases on dit-tiny, shared by the tests that read it (about 20 calls a target)."""
    folder = tmp_path_factory.mktemp("cal")
    suite = folder / "suite.yaml"
    suite.write_text(HEAD + ENTROPY + FBC)
    assert main(["calibrate", str(suite), "--target-reuse", "0.3", "0.5"]) == 0
    return folder, suite


class _Steps:
    """A reuse that rises in steps of 1/8 at known edges: what a real case's reuse looks like."""

    def __init__(self, edges: list[float], low: float = 1e-3, high: float = 1e3) -> None:
        self.edges, self.low, self.high, self.calls = edges, low, high, 0

    def valid(self, value: float) -> bool:
        return self.low <= value <= self.high

    def __call__(self, value: float) -> float:
        self.calls += 1
        return sum(value >= e for e in self.edges) / 8


def test_the_search_lands_on_the_level_nearest_the_target_beside_its_edge():
    edges = [0.0123, 0.05, 0.2, 0.31, 0.77, 4.2, 17.0, 90.0]
    reuse = _Steps(edges)
    grid = [v for v in (1e-3, 1e-2, 0.1, 0.5, 1.0, 10.0, 100.0, 1e3) if reuse.valid(v)]
    value, got = _closest(reuse, grid, 0.5)  # 4 of 8 edges: at 0.31
    assert got == 0.5 and 0.31 <= value <= 0.31 * (1 + 2e-4)
    value, got = _closest(reuse, grid, 0.3)  # between 2/8 and 3/8: 0.25 is nearer
    assert got == 0.25 and 0.05 <= value < 0.2 and reuse(value) == 0.25
    assert reuse.calls < 80


def test_a_threshold_that_lowers_reuse_is_searched_the_other_way():
    class Falling(_Steps):
        def __call__(self, value: float) -> float:
            return 1.0 - super().__call__(value)

    reuse = Falling([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], low=0.05, high=0.95)
    grid = [0.9, 0.7, 0.5, 0.3, 0.1]  # ordered so that reuse grows along it
    value, got = _closest(reuse, grid, 0.5)
    assert got == 0.5 and reuse(value) == 0.5


def test_calibrate_writes_thresholds_that_give_the_target_reuse_on_held_out_seeds(calibrated, tmp_path):
    folder, suite_path = calibrated
    data = json.loads((folder / "cal.json").read_text())
    assert data["format"] == calib.FORMAT and len(data["entries"]) == 1
    entry = data["entries"][0]
    assert entry["seeds"] == [1] and entry["steps"] == 8 and entry["model"] == "dit-tiny"
    assert set(entry["thresholds"]) == {"entropy", "fbc"}
    for case, th in entry["thresholds"].items():
        for t in th["targets"]:
            if t["value"] is not None:
                assert abs(t["reuse"] - t["target"]) <= 0.15, (case, t)  # the nearest of 8-step levels
    suite = load_suite(suite_path)
    entropy = suite.case("entropy")
    assert entropy.parts["gate"].params["threshold"] == next(t["value"] for t in entry["thresholds"]["entropy"]["targets"] if t["target"] == 0.5)
    assert entropy.calibrated == {"gate.threshold": 0.5}
    identity = case_identity(suite, entropy, get_registry(), "cpu")
    assert identity["calibration"] == calib.read(folder / "cal.json").entries[0].digest
    assert "calibration" not in case_identity(suite, suite.case("baseline"), get_registry(), "cpu")
    assert (folder / "cal.html").exists()


def test_a_suite_over_other_steps_or_with_edited_parts_is_told_to_calibrate_again(calibrated, tmp_path):
    folder, suite_path = calibrated
    text = suite_path.read_text()
    other = folder / "other-steps.yaml"
    other.write_text(text.replace("steps: 8", "steps: 6"))
    with pytest.raises(SuiteError, match=r"made for model 'dit-tiny', ddim 8 steps.*not for model 'dit-tiny', ddim 6 steps.*dqar-bench calibrate"):
        load_suite(other)
    edited = folder / "edited.yaml"
    edited.write_text(text.replace("cache: attention-output", "cache: attention-mlp-output"))
    with pytest.raises(SuiteError, match=r"case 'entropy'.*parts changed since it was calibrated"):
        load_suite(edited)
    renamed = folder / "renamed.yaml"
    renamed.write_text(text.replace("- name: entropy", "- name: focused"))
    with pytest.raises(SuiteError, match=r"case 'focused'.*no threshold for this case"):
        load_suite(renamed)
    measured = folder / "measured.yaml"
    measured.write_text(text.replace("seeds: [0]", "seeds: [1]"))
    with pytest.raises(SuiteError, match=r"made on seed 1, which the suite measures"):
        load_suite(measured)


def test_a_target_out_of_reach_says_the_reachable_range(calibrated):
    folder, suite_path = calibrated
    entry = calib.read(folder / "cal.json").entries[0]
    low, high = entry.thresholds["fbc"].reachable
    assert high < 0.99  # block 0 always computes: FirstBlockCache cannot reuse it
    far = folder / "far.yaml"
    far.write_text(suite_path.read_text().replace("threshold: {calibrated: 0.3}", "threshold: {calibrated: 0.99}"))
    with pytest.raises(SuiteError, match=r"case 'fbc'.*target reuse 0.99 is out of reach.*reaches reuse .* to "):
        load_suite(far)


def test_calibrate_exits_2_naming_a_marker_no_threshold_reaches(write_suite, tmp_path, capsys):
    path = write_suite(HEAD + FBC.replace("{calibrated: 0.3}", "{calibrated: 0.99}"))
    assert main(["calibrate", str(path), "--target-reuse", "0.3", "--seeds", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case 'fbc'" in err[0] and "out of reach" in err[0] and "Traceback" not in err[0]
    assert (tmp_path / "cal.json").exists()  # what was measured is kept


@pytest.mark.parametrize("body,match", [
    (ENTROPY.replace("{calibrated: 0.5}", "{calibrated: 1.5}"), r"target reuse must be a number in \(0, 1\)"),
    (ENTROPY.replace("threshold: {calibrated: 0.5}", "max_reuse: {calibrated: 0.5}"), r"sets this gate's threshold parameter 'threshold', not 'max_reuse'"),
    (ENTROPY.replace("threshold: {calibrated: 0.5}", "threshold: calibrated"), r"'calibrated' reads a fit"),
    ("  - name: every\n    gate: {name: interval, every: {calibrated: 0.5}}\n    cache: attention-output\n", r"needs a gate whose threshold calibrate searches"),
])
def test_a_marker_the_calibration_cannot_answer_is_one_line(write_suite, body, match):
    with pytest.raises(SuiteError, match=match):
        load_suite(write_suite(HEAD + body))


def test_a_marker_without_a_calibration_file_names_the_command(write_suite, tmp_path):
    with pytest.raises(SuiteError, match=r"cal.json does not exist; make it with: dqar-bench calibrate"):
        load_suite(write_suite(HEAD + ENTROPY))
    with pytest.raises(SuiteError, match=r"reads a calibration, and none is named; add 'calibration: FILE'"):
        load_suite(write_suite(HEAD.replace("calibration: cal.json\n", "") + ENTROPY))
    (tmp_path / "cal.json").write_text('{"format": "other"}')
    with pytest.raises(SuiteError, match=r"not a dqar-bench calibration file"):
        load_suite(write_suite(HEAD + ENTROPY))


@pytest.mark.parametrize("args,match", [
    (["--target-reuse", "1.2"], r"--target-reuse: 1.2 is not a share"),
    (["--target-reuse", "0"], r"--target-reuse: 0 is not a share"),
    (["--case", "baseline"], r"--case 'baseline': its gate has no threshold"),
    (["--case", "nope"], r"--case 'nope': no such case"),
    (["--seeds", "0"], r"--seeds: seed 0 is one the suite measures"),
])
def test_bad_calibrate_flags_are_one_line_and_exit_2(write_suite, capsys, args, match):
    path = write_suite(HEAD + ENTROPY)
    assert main(["calibrate", str(path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    import re

    assert re.search(match, err), err


def test_writing_keeps_the_entries_of_other_models(tmp_path):
    path = tmp_path / "c.json"
    a = calib.Entry(calib.Tag("m1", None, "ddim", 8, 4.0), [1])
    b = calib.Entry(calib.Tag("m2", None, "ddim", 8, 4.0), [1], teacache_coefficients=[1.0, 0.0])
    calib.write(path, [a])
    calib.write(path, [b])
    again = calib.Entry(calib.Tag("m1", None, "ddim", 8, 4.0), [2], mag_ratios=[1.0, math.inf])
    read = calib.write(path, [again])
    assert [e.tag.model for e in read.entries] == ["m2", "m1"]
    assert read.entries[1].seeds == [2] and read.entries[1].mag_ratios == [1.0, None]  # JSON has no inf



def test_a_sweep_over_targets_is_searched_once_and_each_case_reads_its_own(write_suite, capsys):
    path = write_suite(HEAD + """\
  - name: entropy
    gate: {name: entropy}
    cache: attention-output
    sweep: {parameter: gate.threshold, values: [{calibrated: 0.25}, {calibrated: 0.5}]}
""")
    assert main(["calibrate", str(path), "--target-reuse", "0.5"]) == 0
    said = capsys.readouterr().out
    assert "entropy-threshold-calibrated0.25, entropy-threshold-calibrated0.5: reuse" in said  # one search
    suite = load_suite(path)
    low, high = (suite.case(f"entropy-threshold-calibrated{t}").parts["gate"].params["threshold"] for t in ("0.25", "0.5"))
    assert low < high  # each case reads its own target (0.25 was asked by the sweep alone)


def test_a_new_calibration_is_a_changed_case_on_resume(write_suite, tmp_path, capsys):
    """The case read the file: a recalibration (other seeds, other thresholds) makes it another case."""
    from tests.test_resume import one_line

    path = write_suite(HEAD + ENTROPY)
    assert main(["calibrate", str(path), "--target-reuse", "0.5", "--case", "entropy"]) == 0
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["calibrate", str(path), "--target-reuse", "0.5", "--seeds", "3", "4"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--resume", str(out)]) == 2
    err = one_line(capsys)
    assert "entropy (" in err and "calibration" in err and "baseline" not in err


def test_a_case_may_name_its_own_calibration(calibrated):
    folder, suite_path = calibrated
    (folder / "sub").mkdir(exist_ok=True)
    case_level = folder / "sub" / "case-level.yaml"
    case_level.write_text(suite_path.read_text().replace("calibration: cal.json\n", "").replace(
        "    cache: attention-output\n", "    cache: attention-output\n    calibration: ../cal.json\n"))
    with pytest.raises(SuiteError, match=r"case 'fbc': field 'gate.threshold' reads a calibration, and none is named"):
        load_suite(case_level)  # the case-level file is the entropy case's alone
    case_level.write_text(case_level.read_text().replace(FBC, ""))
    suite = load_suite(case_level)
    assert suite.case("entropy").calibration_digest == calib.read(folder / "cal.json").entries[0].digest


def test_too_few_steps_for_teacaches_fit_leave_it_out_and_say_so(write_suite, tmp_path, capsys):
    path = write_suite("""\
name: short
model: flux-tiny
sampler: {name: flow-euler, steps: 3}
prompt_lengths: [8]
seeds: [0]
device: cpu
cases:
  - name: baseline
""")
    assert main(["calibrate", str(path), "--fits-only", "-o", str(tmp_path / "c.json")]) == 0
    assert "no TeaCache fit: fit_rescale: a degree-4 fit needs at least 5 defined pairs" in capsys.readouterr().out
    (entry,) = calib.read(tmp_path / "c.json").entries
    assert entry.teacache_coefficients is None and entry.mag_ratios is not None and not entry.thresholds


def test_recalibrating_another_model_of_the_file_leaves_this_models_cases_as_they_were(calibrated, tmp_path):
    import shutil

    folder, suite_path = calibrated
    for name in ("suite.yaml", "cal.json"):
        shutil.copy(folder / name, tmp_path / name)
    before = load_suite(tmp_path / "suite.yaml").case("entropy").calibration_digest
    file_before = calib.read(tmp_path / "cal.json").digest
    calib.write(tmp_path / "cal.json", [calib.Entry(calib.Tag("another-model", None, "ddim", 8, 4.0), [1])])
    assert calib.read(tmp_path / "cal.json").digest != file_before
    assert load_suite(tmp_path / "suite.yaml").case("entropy").calibration_digest == before
