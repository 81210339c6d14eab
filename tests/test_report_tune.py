"""The report's Pareto-front section, from the folder a real (tiny) `dqar-bench tune` wrote.

One search per module (dit-tiny, 6 steps, 4 trials of an interval gate, a PSNR floor that
some trials miss): its folder is shown as named, as `tune/` in a directory, and beside a
run; a missing or garbled trials file is one line, exit 2.
"""

from __future__ import annotations

import base64
import csv
import re
import shutil
from pathlib import Path

import pytest

from dqar_bench.cli import main
from tests.conftest import SMALL_SUITE_HEAD
from tests.test_report import remote_resources
from tests.test_tune import CASES

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    """A finished search: interval `every` in 1..4, so the front holds the identical every=1 and faster, lossier ones."""
    root = tmp_path_factory.mktemp("tune")
    suite = root / "suite.yaml"
    suite.write_text(SMALL_SUITE_HEAD + CASES)
    out = root / "tune"
    assert main(["tune", str(suite), "--case", "every", "--trials", "4", "--space", "gate.every=1:4", "--min-psnr", "51", "-o", str(out)]) == 0
    return out


def trials(folder: Path) -> list[dict[str, str]]:
    with (folder / "trials.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def expected_front(rows: list[dict[str, str]]) -> set[int]:
    """The trials no other beats on both speedup and PSNR, computed here from the file's text."""
    ok = [(int(r["trial"]), float(r["speedup"]), float(r["psnr"])) for r in rows if r["status"] == "ok"]
    return {t for t, s, q in ok if not any(s2 >= s and q2 >= q and (s2 > s or q2 > q) for _, s2, q2 in ok)}


def section(page: str, key: str = "tune") -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S)
    assert match, f"no section {key}"
    return match.group(1)


def front_rows(part: str) -> dict[int, str]:
    return {int(t): row for t, row in re.findall(r'<tr data-trial="(\d+)">(.*?)</tr>', part, re.S)}


def test_the_section_holds_the_front_s_trials_and_the_search_s_own_plot(tuned, tmp_path, capsys):
    page_path = tmp_path / "page.html"
    assert main(["report", str(tuned), "-o", str(page_path)]) == 0
    page = page_path.read_text()
    part = section(page)
    rows = trials(tuned)
    shown = front_rows(part)
    assert set(shown) == expected_front(rows) and shown
    by_trial = {int(r["trial"]): r for r in rows}
    for trial, row in shown.items():
        cells = re.findall(r'data-v="([^"]*)"', row)
        source = by_trial[trial]
        # trial, every, speedup, psnr, ssim, reuse, feasible: the cells carry the file's values
        assert int(cells[0]) == trial and float(cells[1]) == int(source["gate.every"])
        assert float(cells[2]) == pytest.approx(float(source["speedup"]), rel=1e-12)
        psnr = float(source["psnr"])
        assert float(cells[3]) == (1e308 if psnr == float("inf") else pytest.approx(psnr, rel=1e-12))
        assert cells[-1] == str(int(source["feasible"] == "True"))
        assert ('class="badge ok">yes' in row) == (source["feasible"] == "True")
    speeds = [float(by_trial[int(t)]["speedup"]) for t in re.findall(r'<tr data-trial="(\d+)">', part)]
    assert speeds == sorted(speeds, reverse=True)  # fastest first
    [png] = re.findall(r'<img class="figure pareto" src="data:image/png;base64,([^"]+)"', part)
    assert base64.b64decode(png) == (tuned / "pareto.png").read_bytes()  # the search's own plot, embedded
    assert remote_resources(page) == []
    assert 'href="#tune"' in page.split("</nav>")[0]
    assert "tuned.yaml" in part


def test_a_beaten_trial_is_left_off_the_front(tuned, tmp_path):
    """A trial slower and further from the baseline than another is in the file, not in the table."""
    folder = tmp_path / "t"
    shutil.copytree(tuned, folder)
    rows = trials(folder)
    slowest = min(float(r["speedup"]) for r in rows if r["status"] == "ok")
    worst = min(float(r["psnr"]) for r in rows if r["status"] == "ok")
    beaten = {**rows[0], "trial": "99", "speedup": repr(slowest / 2), "psnr": repr(worst / 2), "feasible": "False"}
    with (folder / "trials.csv").open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(rows[0])).writerow(beaten)
    assert main(["report", str(folder), "-o", str(tmp_path / "page.html")]) == 0
    shown = front_rows(section((tmp_path / "page.html").read_text()))
    assert 99 not in shown and set(shown) == expected_front(trials(tuned)) == expected_front(trials(folder))
    assert "5 trials" in section((tmp_path / "page.html").read_text())


def test_the_search_writes_the_page_itself(tuned):
    page = (tuned / "report.html").read_text()
    assert set(front_rows(section(page))) == expected_front(trials(tuned))


def test_a_directory_holding_tune_is_its_default_output(tuned, tmp_path, capsys):
    parent = tmp_path / "small-20261207-120000"  # runs/tune.py: default_output_dir(suite) / "tune"
    shutil.copytree(tuned, parent / "tune")
    assert main(["report", str(parent)]) == 0
    page = (parent / "report.html").read_text()
    assert set(front_rows(section(page))) == expected_front(trials(tuned))
    assert 'id="summary"' not in page  # the search alone: no run to show


def test_a_run_with_a_tune_folder_shows_both(report_run, tuned, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(report_run[0].path, run)
    shutil.copytree(tuned, run / "tune")
    assert main(["report", str(run), "-o", str(tmp_path / "page.html")]) == 0
    page = (tmp_path / "page.html").read_text()
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids == ["summary", "images", "reuse", "steps", "pareto", "tune", "environment"]
    assert set(front_rows(section(page))) == expected_front(trials(tuned))


def test_a_missing_plot_is_drawn_again_from_the_trials(tuned, tmp_path):
    folder = tmp_path / "t"
    shutil.copytree(tuned, folder)
    (folder / "pareto.png").write_text("not a picture")
    assert main(["report", str(folder), "-o", str(tmp_path / "page.html")]) == 0
    part = section((tmp_path / "page.html").read_text())
    [png] = re.findall(r'src="data:image/png;base64,([^"]+)"', part)
    assert base64.b64decode(png).startswith(b"\x89PNG")
    assert "pareto.png is not a PNG: drawn again from trials.csv" in part


def _garble(text: str) -> str:
    lines = text.splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    cells = lines[2].rstrip("\n").split(",")
    cells[header.index("speedup")] = "fast"
    return "".join(lines[:2]) + ",".join(cells) + "\n" + "".join(lines[3:])


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda f: (f / "trials.csv").unlink(), "trials.csv: missing"),
        (lambda f: (f / "trials.csv").write_text(_garble((f / "trials.csv").read_text())), "trials.csv: line 3: field 'speedup': 'fast' is not a number"),
        (lambda f: (f / "trials.csv").write_text((f / "trials.csv").read_text().splitlines()[0] + "\n1,ok,2\n"), "line 2: the row has another number of fields"),
        (lambda f: (f / "trials.csv").write_text("a,b\n1,2\n"), "line 1: no column 'trial', 'status', 'gate.every', 'speedup', 'psnr'"),
        (lambda f: (f / "trials.csv").write_bytes(b"\xff\xfe\x00garbage"), "trials.csv: not readable"),
        (lambda f: (f / "tune.json").write_text("{"), "tune.json: not readable JSON"),
        (lambda f: (f / "tune.json").write_text((f / "tune.json").read_text().replace('"seeds": [', '"seeds": ["x", ')), "tune.json: field 'seeds'"),
    ],
)
def test_a_missing_or_garbled_file_is_one_line(tuned, tmp_path, capsys, damage, expected):
    folder = tmp_path / "t"
    shutil.copytree(tuned, folder)
    damage(folder)
    capsys.readouterr()
    assert main(["report", str(folder), "-o", str(tmp_path / "page.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert "`dqar-bench tune`" in err  # the fix: where the file comes from
    assert not (tmp_path / "page.html").exists()


def test_resuming_from_a_garbled_trials_file_is_the_same_one_line(tuned, tmp_path, capsys):
    folder = tmp_path / "t"
    shutil.copytree(tuned, folder)
    (folder / "trials.csv").write_text(_garble((folder / "trials.csv").read_text()))
    suite = tuned.parent / "suite.yaml"
    capsys.readouterr()
    assert main(["tune", str(suite), "--case", "every", "--trials", "5", "--space", "gate.every=1:4", "--min-psnr", "51", "-o", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 3: field 'speedup': 'fast' is not a number" in err, err


@pytest.mark.browser
def test_the_page_renders_offline_and_its_front_sorts_in_a_browser(tuned):
    """Headless Chromium (skipped without it): a clean console, nothing fetched, and the front's table sorts by speedup."""
    from report_browser import Browser, find_chromium

    from tests.test_report_browser import assert_looks_drawn, assert_offline

    if find_chromium() is None:
        pytest.skip("Chromium is not installed: `apt-get install chromium` (.ci/run installs it)")
    slowest_first = """(() => {
        const head = Array.from(document.querySelectorAll("table.front th")).find(th => th.textContent.trim() === "FLOP speedup");
        head.click();  // ascending
        return Array.from(document.querySelectorAll("table.front tbody tr")).map(tr => Number(tr.dataset.trial));
    })()"""
    with Browser() as browser:
        visit = browser.visit((tuned / "report.html").as_uri(), evaluate=[slowest_first])
    assert visit.errors == []
    assert_offline(visit)
    assert_looks_drawn(visit)
    speed = {int(r["trial"]): float(r["speedup"]) for r in trials(tuned)}
    order = visit.values[0]
    assert set(order) == expected_front(trials(tuned))
    assert [speed[t] for t in order] == sorted(speed[t] for t in order)
