"""Bad input of the smaller kinds: one line, exit 2, no traceback, nothing half-written."""

from __future__ import annotations

import errno
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from dqar_bench.cli import main
from dqar_bench.core import files
from dqar_bench.measure.records import RunDir
from tests.conftest import SMALL_SUITE_HEAD
from tests.test_resume import CASES, one_line
from tests.test_run_files import finished  # noqa: F401 - a fixture


def test_names_that_look_like_math_go_into_figures_as_plain_text(write_suite, tmp_path, capsys):
    body = SMALL_SUITE_HEAD.replace("name: small", "name: '$x^{$'") + CASES.replace("name: iv", "name: '$\\frac{$'")
    out = tmp_path / "run"
    assert main(["run", str(write_suite(body)), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"plot: {out / 'pareto.png'}" in printed and f"report: {out / 'report.html'}" in printed
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and "$\\frac{$" in (out / "report.html").read_text()


def test_a_full_disk_is_one_line_and_leaves_the_old_report_and_no_temporary_file(finished, monkeypatch, capsys):  # noqa: F811
    _, out = finished
    before = (out / "report.html").read_bytes()
    real = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and "report.html" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", full)
    assert main(["report", str(out)]) == 2
    assert "report.html: not written (No space left on device)" in one_line(capsys)
    assert (out / "report.html").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_report_output_onto_a_directory_is_one_line(finished, tmp_path, capsys):  # noqa: F811
    _, out = finished
    (tmp_path / "dir").mkdir()
    assert main(["report", str(out), "-o", str(tmp_path / "dir")]) == 2
    assert "not written" in one_line(capsys)


def test_report_output_under_a_file_is_one_line_before_rendering(finished, tmp_path, capsys, monkeypatch):  # noqa: F811
    _, out = finished
    (tmp_path / "afile").write_text("x")
    from dqar_bench.views.report import page

    monkeypatch.setattr(page, "render", lambda *a, **k: pytest.fail("rendered before the output was checked"))
    for target in (tmp_path / "afile" / "r.html", tmp_path / "afile" / "deeper" / "r.html"):
        assert main(["report", str(out), "-o", str(target)]) == 2
        assert f"{tmp_path / 'afile'} is a file, not a folder" in one_line(capsys)


def test_report_output_where_a_folder_cannot_be_made_is_one_line(finished, tmp_path, capsys, monkeypatch):  # noqa: F811
    # a folder that is not writable (simulated: the tests may run as root, whom permissions do not stop)
    _, out = finished

    def refused(path, mode=0o777):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "mkdir", refused)
    assert main(["report", str(out), "-o", str(tmp_path / "missing" / "r.html")]) == 2
    assert f"the folder {tmp_path / 'missing'} cannot be made (Permission denied)" in one_line(capsys)
    monkeypatch.undo()
    assert main(["report", str(out), "-o", str(tmp_path / "missing" / "r.html")]) == 0  # a missing folder that can be made is made
    assert (tmp_path / "missing" / "r.html").read_text().startswith("<!")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_report_output_into_a_folder_not_writable_is_one_line(finished, tmp_path, capsys):  # noqa: F811
    _, out = finished
    (tmp_path / "ro").mkdir(mode=0o555)
    assert main(["report", str(out), "-o", str(tmp_path / "ro" / "r.html")]) == 2
    assert "not written" in one_line(capsys)


@pytest.mark.parametrize("damage", ["garbage", "empty", "wrong shape", "wrong key"])
def test_a_damaged_preview_costs_its_pictures_not_the_report(finished, capsys, damage):  # noqa: F811
    _, out = finished
    path = RunDir(out)._previews_path("iv")
    path.parent.mkdir(exist_ok=True)
    if damage == "garbage":
        path.write_bytes(os.urandom(64))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        key = "seed_0" if damage == "wrong shape" else "seed_x"
        save_file({key: torch.zeros(2, 7, 9, dtype=torch.uint8) if damage == "wrong shape" else torch.zeros(1, 3, 8, 8, dtype=torch.uint8)}, str(path))
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert "previews of case 'iv' not shown" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_rank_timeout_must_be_a_usable_number_of_seconds(write_suite, capsys, value):
    assert main(["run", str(write_suite(SMALL_SUITE_HEAD + CASES)), "--rank-timeout", value]) == 2
    assert "--rank-timeout must be a positive number of seconds up to 604800 (a week)" in one_line(capsys)


@pytest.mark.parametrize("steps", ["0", "-3", "2000"])
def test_check_part_steps_out_of_range_are_refused(capsys, steps):
    assert main(["check-part", "interval", "--steps", steps]) == 2
    assert f"--steps: {steps} is not a step count" in one_line(capsys)


def test_compare_json_into_a_missing_folder_or_onto_a_directory_is_refused(finished, tmp_path, capsys):  # noqa: F811
    _, out = finished
    for target, why in ((tmp_path / "missing" / "b.json", "does not exist"), (tmp_path, "is a directory")):
        assert main(["compare", str(out), str(out), "--json", str(target)]) == 2
        assert why in one_line(capsys)
    assert main(["compare", str(out), str(out), "--json", str(tmp_path / "b.json")]) in (0, 3)
    assert (tmp_path / "b.json").read_text().startswith("[")


class Calls:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_the_pickle_refusal_names_the_refused_call(tmp_path, protocol):
    from dqar_bench.core.errors import DqarError
    from dqar_bench.core.weights import check_weights_file

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": Calls()}, protocol=protocol))
    with pytest.raises(DqarError, match=r"not plain weights \(it calls posix\.system\)"):
        check_weights_file(path, "field 'quality.inception_weights'")


@pytest.mark.parametrize(("field", "value"), [("seeds", "0,1"), ("reuse_map", "lots"), ("median_s", "fast"), ("quality", {"psnr_db": "high"})])
def test_a_malformed_record_is_left_out_of_the_report_in_one_line(finished, capsys, field, value):  # noqa: F811
    import json

    _, out = finished
    lines = (out / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    record[field] = value
    (out / "records.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(record)]) + "\n")
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"record of case '{record['case']}' left out: field '{field}" in err and err.count("\n") == 1, err


def test_a_long_reuse_map_is_drawn_in_bounded_columns(finished, capsys):  # noqa: F811
    import json

    from dqar_bench.views.report.reuse import MAX_COLUMNS

    _, out = finished
    lines = (out / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert record["case"] == "iv"
    record.update(reuse_map=[[1, 0]] * 100_000, reuse_map_calls=1, step_s=None)
    (out / "records.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(record)]) + "\n")
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count('title="steps ') == 2 * MAX_COLUMNS and 'data-reused="100000"' in page
    assert len(page) < 2_000_000
