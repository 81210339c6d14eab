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
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.records import RECORDS, RunDir
from dqar_bench.views.report.previews import checked_previews
from dqar_bench.views.table import results_frame


@dataclass
class Run:
    path: Path
    label: str
    records: list[CaseRecord]
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
    def first(self) -> CaseRecord:
        return self.records[0]

    @property
    def setting(self) -> str:
        """What this run sampled, in its own words: model, sampler and steps (runs compared may differ in each)."""
        first = self.first
        steps = first.steps
        sampler = ", ".join(str(v) for v in (first.sampler, f"{steps} step{'' if steps == 1 else 's'}" if steps is not None else None) if v)
        return " · ".join(str(v) for v in (first.model, sampler) if v)

    @property
    def environment(self) -> dict[str, Any]:
        """The environment the run's first case that names one ran in (kept once per run)."""
        if self.dir is None:
            return {}
        return next((env for env in map(self.dir.environment_of, self.records) if env), {})


@dataclass
class Entry:
    run: Run
    record: CaseRecord
    row: dict[str, Any]
    prefix: str = ""
    """`run label: ` when the report shows several runs."""

    @property
    def case(self) -> str:
        return self.record.case

    @property
    def label(self) -> str:
        return self.prefix + self.case

    @property
    def status(self) -> str:
        return str(self.record.status or "unknown")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def is_baseline(self) -> bool:
        return bool(self.row.get("is_baseline"))

    @property
    def baseline_case(self) -> str:
        return self.record.baseline_case or "baseline"

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
            raise DqarError(f"{path}: not a directory; give a run directory (one that holds records.jsonl) or a `dqar-bench tune` folder (one that holds tune.json)")
        run_dir = RunDir(path)  # reads only: creates nothing
        records = [r for r in run_dir.records() if _well_formed(r.to_json(), path)]
        if cases is not None:
            records = [r for r in records if r.case in cases]
        if not records:
            raise DqarError(f"{path}: no records.jsonl with finished cases and no tune.json; is it a run directory of `dqar-bench run` or a folder of `dqar-bench tune`?")
        baseline = records[0].baseline_case or "baseline"
        runs.append(Run(path, path.name, records, results_frame(records, baseline), dir=run_dir))
    _unique_labels(runs)
    several = len(runs) > 1
    for run in runs:
        latest = {r.case: r for r in run.records}
        rows = {row["case"]: row for row in run.frame.to_dict("records")}
        run.entries = [Entry(run, record, rows[case], f"{run.label}: " if several else "") for case, record in latest.items()]
    return runs


NUMBERS = ("median_s", "per_image_s", "reuse_ratio", "cold_s", "class_accuracy", "reused", "evaluations")
NUMBER_LISTS = ("latency_s", "round_s", "baseline_round_s", "warmup_s")


def _well_formed(record: dict[str, Any], path: Path) -> bool:
    """Whether a record has the shape a run writes, in the fields the report reads; one that
    does not (numbers as text, a reuse map that is no grid) is named on stderr and left out."""
    problem = _malformed(record)
    if problem:
        print(f"report: {path / RECORDS}: record of case {str(record.get('case'))[:80]!r} left out: {problem}", file=sys.stderr)
    return problem is None


def _malformed(record: dict[str, Any]) -> str | None:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(record.get("case"), str):
        return "field 'case' is not text"
    seeds = record.get("seeds")
    if seeds is not None and not (isinstance(seeds, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
        return "field 'seeds' is not a list of integers"
    for key in NUMBERS:
        if record.get(key) is not None and not number(record[key]):
            return f"field '{key}' is not a number"
    for key in NUMBER_LISTS:
        value = record.get(key)
        if value is not None and not (isinstance(value, list) and all(number(x) for x in value)):
            return f"field '{key}' is not a list of numbers"
    for key in ("reuse_map", "step_s"):
        grid = record.get(key)
        if grid is not None and not (isinstance(grid, list) and all(isinstance(row, list) and all(number(x) for x in row) for row in grid)):
            return f"field '{key}' is not a grid of numbers"
    grid = record.get("reuse_map")
    if grid and (len({len(row) for row in grid}) != 1 or not isinstance(record.get("reuse_map_calls"), int)):
        return "field 'reuse_map' is not a full grid with an integer 'reuse_map_calls'"
    for key in ("quality", "fidelity", "latency", "flops"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            return f"field '{key}' is not a mapping"
    quality = record.get("quality") or {}
    for key in ("psnr_db", "ssim", "lpips", "mse", "image_mse"):
        if quality.get(key) is not None and not number(quality[key]):
            return f"field 'quality.{key}' is not a number"
    return None


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
