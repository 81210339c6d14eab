"""The HTML report of a run: see what a strategy did, not only its numbers.

`write_report(run_dirs, output)` writes one self-contained page (summary table, images side
by side, reuse maps, step times, the Pareto plot, the environment) from run directories
alone, and the Pareto front of any `dqar-bench tune` folder among them; the runner calls
`report_run` at the end of every run, `tune` at the end of every search, and `dqar-bench
report` rebuilds it or compares several runs.
"""

from __future__ import annotations

from pathlib import Path

from dqar_bench.measure.records import RunDir
from dqar_bench.views.report.page import write_report
from dqar_bench.views.report.previews import keep_previews


def report_run(run: RunDir | Path, cases: set[str] | None = None) -> str:
    """Write `report.html` into the run directory (or tune folder), of `cases` (the suite's, as
    its table shows); a report that fails never costs the run (one line says why)."""
    path = run.path if isinstance(run, RunDir) else Path(run)
    try:
        return str(write_report([path], path / "report.html", cases=cases))
    except Exception as exc:  # noqa: BLE001 - the records are already on disk
        return f"not written: {type(exc).__name__}: {exc}".splitlines()[0]


__all__ = ["keep_previews", "report_run", "write_report"]
