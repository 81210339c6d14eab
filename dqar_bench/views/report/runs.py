"""The runs a report shows, read from their directories alone (records, outputs, previews).

Each case of each run is an `Entry` with its record and its row of the results frame
(`table.results_frame`, so every column the tables have, present or future, is here too).
With several runs an entry is labelled `run: case`, and each compares with the baseline of
its own run and execution mode.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dqar_bench.core.errors import DqarError
from dqar_bench.measure.records import RECORDS, RunDir, read_records
from dqar_bench.views.report.previews import checked_previews
from dqar_bench.views.table import results_frame


@dataclass
class Run:
    path: Path
    label: str
    records: list[dict[str, Any]]
    frame: pd.DataFrame
    entries: list["Entry"] = field(default_factory=list)
    dir: RunDir | None = None
    skipped: list[str] = field(default_factory=list)
    """One line per file of the run that could not be used (said once, on stderr, as it is met)."""

    def skip(self, line: str) -> None:
        if line not in self.skipped:
            self.skipped.append(line)
            print(f"report: {line}", file=sys.stderr)

    @property
    def first(self) -> dict[str, Any]:
        return self.records[0]

    @property
    def environment(self) -> dict[str, Any]:
        return next((r["environment"] for r in self.records if r.get("environment")), {})


@dataclass
class Entry:
    run: Run
    record: dict[str, Any]
    row: dict[str, Any]
    prefix: str = ""
    """`run label: ` when the report shows several runs."""

    @property
    def case(self) -> str:
        return self.record["case"]

    @property
    def label(self) -> str:
        return self.prefix + self.case

    @property
    def status(self) -> str:
        return str(self.record.get("status") or "unknown")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def is_baseline(self) -> bool:
        return bool(self.row.get("is_baseline"))

    @property
    def baseline_case(self) -> str:
        return self.record.get("baseline_case") or "baseline"

    def outputs(self) -> dict[int, torch.Tensor] | None:
        """The case's saved outputs; None where the run has none (or they cannot be read:
        a FIFO, a link or a damaged file is named in one line and skipped)."""
        from dqar_bench.measure.records import OutputsError

        assert self.run.dir is not None
        try:
            return self.run.dir.load_outputs(self.case)
        except OutputsError as exc:
            if not str(exc).endswith(": missing"):
                self.run.skip(f"outputs of case '{self.case}' not shown: {exc}")
            return None

    def previews(self) -> tuple[dict[int, torch.Tensor], dict[str, str]] | None:
        """The previews kept at run time; None where there are none or they cannot be used (named once, skipped)."""
        assert self.run.dir is not None
        try:
            return checked_previews(self.run.dir.load_previews(self.case))
        except Exception as exc:  # noqa: BLE001 - a damaged picture costs the picture, never the report
            self.run.skip(f"previews of case '{self.case}' not shown: {one_line(exc)}")
            return None


def load_runs(paths: list[str | Path], cases: set[str] | None = None) -> list[Run]:
    """Every run directory's records and frame (only `cases`, where given: the runner's report
    shows the cases of the suite as run, like its table); no records is a one-line error."""
    if not paths:
        raise DqarError("report: name at least one run directory")
    runs = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise DqarError(f"{path}: not a directory; give a run directory (one that holds records.jsonl)")
        records = read_records(path / RECORDS)  # read before RunDir(), which would create folders
        if cases is not None:
            records = [r for r in records if r["case"] in cases]
        if not records:
            raise DqarError(f"{path}: no records.jsonl with finished cases; is it a run directory of `dqar-bench run`?")
        baseline = records[0].get("baseline_case") or "baseline"
        runs.append(Run(path, path.name, records, results_frame(records, baseline)))
    _unique_labels(runs)
    several = len(runs) > 1
    for run in runs:
        run.dir = RunDir(run.path)
        latest = {r["case"]: r for r in run.records}
        rows = {row["case"]: row for row in run.frame.to_dict("records")}
        run.entries = [Entry(run, record, rows[case], f"{run.label}: " if several else "") for case, record in latest.items()]
    return runs


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _unique_labels(runs: list[Run]) -> None:
    """Directory names, with parents added until no two runs share a label (the same run twice: numbered)."""
    depth = 1
    while len({r.label for r in runs}) < len(runs) and depth < 4:
        depth += 1
        for run in runs:
            run.label = "/".join(p for p in run.path.resolve().parts[-depth:] if p != "/")
    if len({r.label for r in runs}) < len(runs):
        for number, run in enumerate(runs, 1):
            run.label = f"{run.path.name} #{number}"
