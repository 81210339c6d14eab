"""`--resume` keeps a record's paired figures only while its case is paired with the same
baseline: a swapped or edited baseline is refused with the reason, or rerun under
`--rerun-changed`, so no PSNR or speedup against a baseline that is no longer the suite's
is shown as current."""

from __future__ import annotations

import pytest
import torch

from dqar_bench.cli import main
from dqar_bench.measure.records import RunDir
from tests.conftest import SMALL_SUITE_HEAD
from tests.test_resume import CASES, one_line


def test_a_swapped_baseline_is_refused_naming_every_stale_pairing(write_suite, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(write_suite(SMALL_SUITE_HEAD + CASES)), "-o", str(out)]) == 0
    before = (out / "records.jsonl").read_text()
    capsys.readouterr()
    swapped = write_suite(SMALL_SUITE_HEAD.replace("baseline: baseline", "baseline: iv") + CASES, "swapped.yaml")
    assert main(["run", str(swapped), "--resume", str(out)]) == 2
    err = one_line(capsys)
    assert "2 case(s)" in err and "paired with baseline 'baseline' when recorded, now with 'iv'" in err and "--rerun-changed" in err
    assert (out / "records.jsonl").read_text() == before
    assert main(["run", str(swapped), "--resume", str(out), "--rerun-changed"]) == 0
    resumed = RunDir(out).latest()
    assert main(["run", str(swapped), "-o", str(tmp_path / "fresh")]) == 0
    fresh = RunDir(tmp_path / "fresh").latest()
    assert resumed["baseline"].baseline_case == "iv" and resumed["baseline"].baseline_key == resumed["iv"].case_key
    # both sides computed here, same machine and threads: the tiny model is deterministic on CPU
    assert resumed["baseline"].quality["psnr_db"] == pytest.approx(fresh["baseline"].quality["psnr_db"], rel=1e-4)
    assert resumed["iv"].quality is None  # the baseline itself: nothing to pair with


def test_an_edited_baseline_makes_the_kept_cases_stale(write_suite, tmp_path, capsys):
    head = SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n    gate: {name: interval, every: 3}\n  - name: other\n    gate: never\n"
    out = tmp_path / "run"
    assert main(["run", str(write_suite(head)), "-o", str(out)]) == 0
    capsys.readouterr()
    edited = write_suite(head.replace("every: 3", "every: 4"), "edited.yaml")
    assert main(["run", str(edited), "--resume", str(out)]) == 2
    err = one_line(capsys)
    assert "baseline (parts.gate.params.every)" in err and "other (its baseline 'baseline' changed" in err
    assert main(["run", str(edited), "--resume", str(out), "--rerun-changed"]) == 0
    latest = RunDir(out).latest()
    assert latest["other"].baseline_key == latest["baseline"].case_key


def test_an_unchanged_suite_still_resumes_without_rerunning(write_suite, tmp_path, monkeypatch):
    from tests.test_resume import prepared

    path = write_suite(SMALL_SUITE_HEAD + CASES)
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    ran = prepared(monkeypatch)
    assert main(["run", str(path), "--resume", str(out)]) == 0
    assert ran == []


@pytest.mark.parametrize("data", [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x3f"], ids=["nan", "finite"])
def test_outputs_whose_data_changed_under_an_intact_header_are_rerun(write_suite, tmp_path, capsys, monkeypatch, data):
    from tests.test_resume import prepared

    path = write_suite(SMALL_SUITE_HEAD + CASES)
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    capsys.readouterr()
    file = RunDir(out).outputs_path("baseline")
    raw = bytearray(file.read_bytes())
    raw[-4:] = data  # the last float32 of the data: the header still reads
    file.write_bytes(bytes(raw))
    RunDir(out).load_outputs("baseline")  # it loads: only its content is wrong
    ran = prepared(monkeypatch)
    assert main(["run", str(path), "--resume", str(out)]) == 0
    assert f"{file}: " in capsys.readouterr().out and ran == ["baseline"]
    latest = RunDir(out).latest()
    assert latest["baseline"].outputs_sha256 != latest["iv"].outputs_sha256
    assert torch.isfinite(RunDir(out).load_outputs("baseline")[0]).all()
