"""Run directories travel, so nothing planted in one may turn a write or a read against its
reader: no write goes through a symlink, a symlink where a run file belongs is refused in
one line, and a FIFO never blocks `report` or `--resume`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dqar_bench.cli import main
from dqar_bench.core.files import UnsafeFile, open_append, read_bytes, write_atomic
from dqar_bench.measure.records import RunDir
from tests.conftest import SMALL_SUITE_HEAD
from tests.test_resume import CASES, one_line


@pytest.fixture()
def finished(write_suite, tmp_path, capsys):
    """A finished two-case run, and the suite that made it."""
    suite = write_suite(SMALL_SUITE_HEAD + CASES)
    out = tmp_path / "run"
    assert main(["run", str(suite), "-o", str(out)]) == 0
    capsys.readouterr()
    return suite, out


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def test_write_atomic_never_follows_a_planted_temporary_name(tmp_path):
    target = victim(tmp_path)
    os.symlink(target, tmp_path / "out.html.tmp")  # the old fixed temporary name
    write_atomic(tmp_path / "out.html", "page")
    assert target.read_text() == "precious\n" and (tmp_path / "out.html").read_text() == "page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.html", "out.html.tmp", "victim.txt"]  # no temporary file left


def test_a_symlink_where_a_file_belongs_is_refused_for_write_append_and_read(tmp_path):
    target = victim(tmp_path)
    os.symlink(target, tmp_path / "link")
    for act in (lambda: write_atomic(tmp_path / "link", "x"), lambda: open_append(tmp_path / "link"), lambda: read_bytes(tmp_path / "link")):
        with pytest.raises(UnsafeFile, match="link: is a symlink where a run file belongs"):
            act()
    (tmp_path / "run" / "outputs").parent.mkdir()
    os.symlink(tmp_path, tmp_path / "run" / "outputs")  # a linked folder carries writes out of the run
    with pytest.raises(UnsafeFile, match="outputs: is a symlink"):
        write_atomic(tmp_path / "run" / "outputs" / "x.safetensors", b"x", tmp_path / "run")
    assert target.read_text() == "precious\n" and not (tmp_path / "x.safetensors").exists()


def test_report_never_writes_through_a_planted_link(finished, tmp_path, capsys):
    _, out = finished
    target = victim(tmp_path)
    os.remove(out / "report.html")
    os.symlink(target, out / "report.html.tmp")
    assert main(["report", str(out)]) == 0
    assert target.read_text() == "precious\n" and (out / "report.html").is_file() and not (out / "report.html").is_symlink()
    os.remove(out / "report.html")
    os.symlink(target, out / "report.html")
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert "report.html: is a symlink where a run file belongs" in one_line(capsys)
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["pareto.png", "rounds.jsonl", "records.jsonl", "results.csv.tmp", "outputs"])
def test_resume_refuses_a_link_in_the_run_directory_before_running_anything(finished, tmp_path, capsys, name):
    suite, out = finished
    target = victim(tmp_path)
    planted = out / name
    if planted.is_dir():
        os.rename(planted, tmp_path / "moved")
        target = tmp_path / "moved"
    elif planted.exists():
        planted.unlink()
    before = {p: p.read_bytes() for p in target.rglob("*")} if target.is_dir() else target.read_bytes()
    os.symlink(target, planted)
    assert main(["run", str(suite), "--resume", str(out)]) == 2
    assert f"{planted}: is a symlink where a run file belongs" in one_line(capsys)
    after = {p: p.read_bytes() for p in target.rglob("*")} if target.is_dir() else target.read_bytes()
    assert after == before


def test_a_fifo_in_outputs_or_previews_is_skipped_by_report_and_refused_by_resume(finished, capsys):
    suite, out = finished
    fifo = RunDir(out).outputs_path("iv")
    fifo.unlink()
    os.mkfifo(fifo)
    (out / "previews").mkdir(exist_ok=True)
    os.mkfifo(out / "previews" / fifo.name)
    assert main(["report", str(out)]) == 0  # returns: a FIFO is never opened for a blocking read
    err = capsys.readouterr().err
    assert f"{fifo}: is a FIFO, not a regular file" in err and "case 'iv' not shown" in err
    assert main(["run", str(suite), "--resume", str(out)]) == 2
    assert "is a FIFO, not a regular file, where run files live; remove it" in one_line(capsys)


def test_a_fifo_as_records_is_refused_in_one_line(finished, capsys):
    _, out = finished
    (out / "records.jsonl").unlink()
    os.mkfifo(out / "records.jsonl")
    assert main(["report", str(out)]) == 2
    assert "records.jsonl: is a FIFO" in one_line(capsys)
