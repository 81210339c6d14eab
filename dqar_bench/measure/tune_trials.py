"""The folder `dqar-bench tune` writes, as files: their names, the quality figures a trial row
carries, reading the trials back, and the Pareto front of them.

It sits below both readers so that the search (`runs/tune.py`, which resumes from the
trials file) and the report (`views/report/tune.py`, which shows it) read one format: a
file the report can show is one the search can go on with, and a garbled one is the same
single line in both.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dqar_bench.core.errors import DqarError
from dqar_bench.measure.case_record import CaseRecord

TRIALS_FILE = "trials.csv"
META_FILE = "tune.json"
SUITE_FILE = "tuned.yaml"
PLOT_FILE = "pareto.png"
STATUSES = ("ok", "failed")


@dataclass(frozen=True)
class Metric:
    """A quality figure a record carries: where to read it, which way is better, and what the suite needs to measure it."""

    name: str
    maximize: bool
    needs: str | None
    """The suite's `quality:` field that turns it on; None: always measured."""
    read: Callable[[CaseRecord], float | None]


def _psnr(record: CaseRecord) -> float | None:
    q = record.quality or {}
    if q.get("identical"):
        return math.inf  # the record's None means "identical to the baseline": no finite PSNR
    return q.get("psnr_db")


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("psnr", True, None, _psnr),
    Metric("ssim", True, None, lambda r: (r.quality or {}).get("ssim")),
    Metric("lpips", False, "lpips", lambda r: (r.quality or {}).get("lpips")),
    Metric("accuracy", True, "classifier", lambda r: r.class_accuracy),
    Metric("clip", True, "clip", lambda r: (r.clip or {}).get("clip_score")),
)}


def is_tune_folder(path: Path) -> bool:
    """Whether `path` is a folder `dqar-bench tune` wrote (it always writes its tune.json first)."""
    return (path / META_FILE).is_file() or (path / TRIALS_FILE).is_file()


def read_meta(folder: Path) -> dict[str, Any]:
    """The search a folder holds (`tune.json`), checked in the fields its readers use."""
    path = folder / META_FILE
    fix = "it is written by `dqar-bench tune`; run the search again into a new folder"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DqarError(f"{path}: missing; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DqarError(f"{path}: not readable JSON ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); {fix}") from None
    if not isinstance(meta, dict):
        raise DqarError(f"{path}: not a JSON object; {fix}")
    if meta.get("quality") not in METRICS:
        raise DqarError(f"{path}: field 'quality': {meta.get('quality')!r} is none of {', '.join(METRICS)}; {fix}")
    space = meta.get("space")
    if not isinstance(space, list) or not space or not all(
        isinstance(d, dict) and isinstance(d.get("kind"), str) and isinstance(d.get("param"), str) and isinstance(d.get("integer"), bool)
        for d in space
    ):
        raise DqarError(f"{path}: field 'space': not a list of {{kind, param, integer, ...}} dimensions; {fix}")
    seeds = meta.get("seeds")
    if not isinstance(seeds, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
        raise DqarError(f"{path}: field 'seeds': not a list of integers; {fix}")
    return meta


def space_keys(meta: dict[str, Any]) -> dict[str, type]:
    """The searched parameters of a search (`gate.threshold`), each with the type its values read as."""
    return {d["kind"] + "." + d["param"]: (int if d["integer"] else float) for d in meta["space"]}


def read_trials(folder: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Every trial of the trials file, typed; anything garbled is one line naming the file, the line and the field."""
    path = folder / TRIALS_FILE
    fix = "it is written by `dqar-bench tune`; run the search again into a new folder"
    types_ = space_keys(meta)
    needed = ["trial", "status", *types_, "speedup", meta["quality"]]
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            lacking = [c for c in needed if c not in header]
            if lacking:
                raise DqarError(f"{path}: line 1: no column {', '.join(repr(c) for c in lacking)} (the header is {','.join(header) or 'empty'}); {fix}")
            rows = []
            for raw in reader:
                try:
                    rows.append(_parse_row(raw, types_, meta["quality"]))
                except ValueError as exc:
                    raise DqarError(f"{path}: line {reader.line_num}: {exc}; {fix}") from None
    except FileNotFoundError:
        raise DqarError(f"{path}: missing; {fix}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DqarError(f"{path}: not readable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); {fix}") from None
    return rows


def _parse_row(raw: dict[str, Any], types_: dict[str, type], quality: str) -> dict[str, Any]:
    """One row of the trials file, typed; ValueError names the field that does not read."""
    if None in raw or any(v is None for v in raw.values()):
        raise ValueError("the row has another number of fields than the header")
    row: dict[str, Any] = {}
    for key, text in raw.items():
        try:
            if key in types_:
                row[key] = types_[key](float(text)) if types_[key] is int else float(text)
            elif key in ("status", "error"):
                row[key] = text
            elif key == "feasible":
                row[key] = text == "True"
            elif key == "trial":
                row[key] = int(text)
            else:
                row[key] = float(text) if text != "" else None
        except ValueError:
            raise ValueError(f"field '{key}': {text[:40]!r} is not {'an integer' if key == 'trial' or types_.get(key) is int else 'a number'}") from None
    if row["status"] not in STATUSES:
        raise ValueError(f"field 'status': {row['status'][:40]!r} is neither ok nor failed")
    if row["status"] == "ok":
        for key in ("speedup", quality):
            if row.get(key) is None or math.isnan(row[key]):
                raise ValueError(f"field '{key}': a finished trial has no value")
    return row


def pareto_front(rows: list[dict[str, Any]], quality: Metric) -> list[dict[str, Any]]:
    """The finished trials no other beats on both speed and quality, fastest first."""
    ok = [r for r in rows if r["status"] == "ok"]
    sign = 1 if quality.maximize else -1

    def beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
        qa, qb = sign * a[quality.name], sign * b[quality.name]
        return a["speedup"] >= b["speedup"] and qa >= qb and (a["speedup"] > b["speedup"] or qa > qb)

    front = [r for r in ok if not any(beats(o, r) for o in ok)]
    return sorted(front, key=lambda r: -r["speedup"])
