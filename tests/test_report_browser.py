"""The report in a real browser: headless Chromium opens it, draws it, and its console stays clean.

Chromium comes from Debian's packages (`apt-get install chromium`; `.ci/run` installs it
where it is missing). Without it these tests are skipped, saying so.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from report_browser import Browser, PageVisit, find_chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed: `apt-get install chromium` (.ci/run installs it)"),
]

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


def drawn(visit: PageVisit) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(visit.screenshot)).convert("RGB"))


def assert_looks_drawn(visit: PageVisit) -> None:
    """Not one colour, and a fair share of the page is not white: the page rendered."""
    pixels = drawn(visit)
    assert pixels.shape[0] >= 900 and pixels.shape[1] == 1280
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 100, f"only {len(colours)} colours: a blank page?"
    ink = (pixels < 235).any(axis=2).mean()
    assert ink > 0.05, f"{ink:.1%} of the screenshot is not white"


def assert_offline(visit: PageVisit) -> None:
    assert visit.requests and visit.requests[0].startswith("file://")
    remote = [url for url in visit.requests if not url.startswith(("file://", "data:"))]
    assert remote == [], f"the page fetched {remote}"


def test_the_report_of_a_run_renders_with_a_clean_console(browser, report_run, tmp_path):
    run = report_run[0]
    sort_by_reuse = """(() => {
        const heads = Array.from(document.querySelectorAll("table.summary th"));
        const reuse = heads.find(th => th.textContent.trim() === "reuse");
        reuse.click(); reuse.click();  // descending
        return Array.from(document.querySelectorAll("table.summary tbody tr")).map(tr => tr.dataset.case);
    })()"""
    visit = browser.visit((run.path / "report.html").as_uri(), full_page=True, evaluate=[sort_by_reuse])
    assert visit.errors == []
    assert_offline(visit)
    assert_looks_drawn(visit)
    assert drawn(visit).shape[0] > 1500  # the whole page, not the first screen only
    order = visit.values[0]  # clicked twice: highest reuse first, cases without a figure last
    records = report_run[1]
    assert sorted(order) == sorted(records)
    ok = [c for c in order if records[c].status == "ok"]
    assert order[: len(ok)] == ok
    reuse = [records[c].reuse_ratio for c in ok]
    assert reuse == sorted(reuse, reverse=True) and reuse[0] > reuse[-1]


def test_the_report_of_the_committed_ci_run_renders(browser, tmp_path):
    from dqar_bench.views.report import write_report

    page = write_report([REPOSITORY / "results" / "ci" / "reference" / "digits-dit"], tmp_path / "ci.html")
    visit = browser.visit(page.as_uri())
    assert visit.errors == []
    assert_offline(visit)
    assert_looks_drawn(visit)


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """Console errors, uncaught exceptions, failed loads and remote requests are all seen."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>broken</p><img src='missing.png'>"
        "<img src='http://127.0.0.1:9/nothing.png'>"
        "<script>console.error('it broke'); undefinedFunction();</script></body></html>"
    )
    visit = browser.visit(page.as_uri())
    text = "\n".join(visit.errors)
    assert "console.error: it broke" in text and "undefinedFunction" in text and "missing.png" in text
    with pytest.raises(AssertionError, match="fetched"):
        assert_offline(visit)
    with pytest.raises(AssertionError):
        assert_looks_drawn(visit)


def test_at_1280_px_the_case_column_stays_while_the_summary_scrolls_and_runs_stand_side_by_side(browser, report_run, tmp_path):
    from dqar_bench.views.report import write_report

    run = report_run[0]
    page = write_report([run.path, run.path], tmp_path / "two.html")  # the same run twice: two columns, "run #1" and "run #2"
    measure = """(() => {
        const box = document.querySelector("#summary .scroll");
        const wide = box.scrollWidth > box.clientWidth;
        box.scrollLeft = box.scrollWidth;
        const first = document.querySelector("table.summary tbody tr td").getBoundingClientRect();
        const second = document.querySelector("table.summary tbody tr td:nth-child(2)").getBoundingClientRect();
        const columns = Array.from(document.querySelectorAll("#images .runcols")[0].children).map(c => c.getBoundingClientRect());
        return {wide: wide, caseLeft: first.left - box.getBoundingClientRect().left, covered: second.left < first.right,
                page: document.documentElement.scrollWidth, tops: columns.map(c => c.top), lefts: columns.map(c => c.left)};
    })()"""
    visit = browser.visit(page.as_uri(), width=1280, evaluate=[measure])
    assert visit.errors == []
    found = visit.values[0]
    assert found["page"] <= 1280  # the page itself never scrolls sideways
    if found["wide"]:  # where the summary is wider than the page, its case column stays at the left edge
        assert abs(found["caseLeft"]) < 1.5 and found["covered"], found
    assert len(found["tops"]) == 2 and found["tops"][0] == found["tops"][1] and found["lefts"][0] < found["lefts"][1]
