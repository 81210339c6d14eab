"""The Pareto-front section of the report, from the folder `dqar-bench tune` wrote.

A search's answer is its front: the trials no other beats on both speed and quality. The
section shows them as a table (which parameters, how fast, how close, whether they meet
the floors) beside the plot the search drew, so the report of a tuned suite and the search
behind it read in one page. The folder is found where the user names it, or as `tune/` in
a named directory, which is where `dqar-bench tune` writes by default.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqar_bench.core.errors import DqarError
from dqar_bench.measure.records import RECORDS
from dqar_bench.measure.tune_trials import METRICS, PLOT_FILE, SUITE_FILE, TRIALS_FILE, is_tune_folder, pareto_front, read_meta, read_trials, space_keys
from dqar_bench.views.report.markup import esc, num, png_uri, psnr, sort_value, speedup
from dqar_bench.views.tune_plot import plot_front

TUNE_DIR = "tune"
"""Where `dqar-bench tune` writes inside its default output directory (`runs/tune.py`)."""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Tune:
    path: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    front: list[dict[str, Any]]
    plot: bytes | None
    """The PNG the search drew, or one drawn here from the trials; None where none can be."""
    note: str = ""
    """Why the plot is not the search's own, where it is not."""

    @property
    def title(self) -> str:
        return f"{self.meta.get('suite', '?')}: {self.meta.get('case', '?')}"


def split_paths(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """The run directories and the tune folders among the paths given to `dqar-bench report`:
    a tune folder itself, or a directory holding one as `tune/` (its runs too, where it has records)."""
    if not paths:
        raise DqarError("report: name at least one run directory or tune folder")
    runs, tunes = [], []
    for given in map(Path, paths):
        if given.is_dir() and is_tune_folder(given):
            tunes.append(given)
            continue
        inner = given / TUNE_DIR
        if inner.is_dir() and is_tune_folder(inner):
            tunes.append(inner)
            if not (given / RECORDS).exists():
                continue  # `dqar-bench tune`'s default output: the search alone
        runs.append(given)
    return runs, tunes


def load_tune(path: Path) -> Tune:
    """A tune folder's search and trials; a missing or garbled file is one line naming it."""
    meta = read_meta(path)
    rows = read_trials(path, meta)
    front = pareto_front(rows, METRICS[meta["quality"]])
    plot, note = _plot(path, meta, rows, front)
    return Tune(path, meta, rows, front, plot, note)


def _plot(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]], front: list[dict[str, Any]]) -> tuple[bytes | None, str]:
    """The search's own plot (it shows the floors); else one drawn from the trials, without them."""
    try:
        data = (path / PLOT_FILE).read_bytes()
    except OSError:
        data, why = b"", f"{PLOT_FILE} is missing"
    else:
        why = f"{PLOT_FILE} is not a PNG"
    if data.startswith(PNG_MAGIC):
        return data, ""
    with tempfile.TemporaryDirectory() as tmp:
        made = plot_front(rows, front, Path(tmp) / PLOT_FILE, meta["quality"], (), "", str(meta.get("objective", "flops")))
        if not isinstance(made, Path):
            return None, f"{why}, and none was drawn ({made})"
        return made.read_bytes(), f"{why}: drawn again from {TRIALS_FILE}, without the floors"


def section(tune: Tune) -> str:
    """The front as a table, fastest first, and the plot of every trial."""
    meta, rows = tune.meta, tune.rows
    quality = meta["quality"]
    params = list(space_keys(meta))
    finished = [r for r in rows if r["status"] == "ok"]
    others = [m for m in METRICS if m != quality and any(r.get(m) is not None for r in tune.front)]
    objective = "FLOP" if meta.get("objective", "flops") == "flops" else "timed"
    head = (
        "<th>trial</th>" + "".join(f"<th>{esc(p)}</th>" for p in params)
        + f'<th class="num">{objective} speedup</th><th class="num">{esc(quality)}</th>'
        + "".join(f'<th class="num">{esc(m)}</th>' for m in others)
        + '<th class="num">reuse</th><th>feasible</th>'
    )
    body = []
    for r in tune.front:
        cells = [f'<td data-v="{r["trial"]}">{r["trial"]}</td>']
        cells += [f'<td class="num" data-v="{sort_value(r[p])}">{esc(_param(r[p]))}</td>' for p in params]
        cells.append(f'<td class="num" data-v="{sort_value(r["speedup"])}">{speedup(r["speedup"])}</td>')
        cells += [f'<td class="num" data-v="{sort_value(r.get(m))}">{_quality(m, r.get(m))}</td>' for m in (quality, *others)]
        cells.append(f'<td class="num" data-v="{sort_value(r.get("reuse_ratio"))}">{num(r.get("reuse_ratio"), "{:.1%}")}</td>')
        ok = r.get("feasible", False)
        cells.append(f'<td data-v="{int(ok)}"><span class="badge {"ok" if ok else "failed"}">{"yes" if ok else "no"}</span></td>')
        body.append(f'<tr data-trial="{r["trial"]}">{"".join(cells)}</tr>')
    failed = len(rows) - len(finished)
    feasible = sum(1 for r in finished if r.get("feasible"))
    lede = (
        f"<p class=\"lede\">The search <code>{esc(tune.path)}</code> of case <b>{esc(meta.get('case'))}</b> of suite "
        f"<b>{esc(meta.get('suite'))}</b>: {len(rows)} trial{'' if len(rows) == 1 else 's'}"
        + (f" ({failed} failed)" if failed else "")
        + f", {feasible} feasible; seeds {esc(', '.join(map(str, meta['seeds'])))}. "
        f"The front is the {len(tune.front)} trial{'' if len(tune.front) == 1 else 's'} no other beats on both "
        f"{objective} speedup and {esc(quality)}, fastest first. Feasible: it meets the quality floors the search was "
        "given (every trial, where none was).</p>"
    )
    table = (
        f'<div class="scroll"><table class="sortable front" data-tune="{esc(tune.path)}"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>'
        if tune.front else '<p class="note">No trial finished, so there is no front.</p>'
    )
    plot = (
        f'<img class="figure pareto" src="{png_uri(tune.plot)}" alt="every trial: speedup against {esc(quality)}">'
        if tune.plot is not None else ""
    )
    notes = [tune.note] if tune.note else []
    if (tune.path / SUITE_FILE).is_file():
        notes.append(f"The fastest setting for each floor is in {tune.path / SUITE_FILE}; measure it with dqar-bench run {tune.path / SUITE_FILE}.")
    return lede + table + plot + "".join(f'<p class="note">{esc(n)}</p>' for n in notes)


def _param(value: Any) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _quality(metric: str, value: Any) -> str:
    if metric == "psnr":
        return psnr(value)
    return "identical" if isinstance(value, float) and math.isinf(value) else num(value, "{:.4g}")
